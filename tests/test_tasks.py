import numpy as np
import pytest
from PIL import Image

from head2toe.errors import H2TError
from head2toe.tasks import TASKS, get_task, task_names

OFFLINE = {"synth_dsprites_loc": 16, "synth_dsprites_ori": 16, "synth_clevr_count": 8, "digits": 10, "faces": 2}


@pytest.mark.parametrize("name,classes", list(OFFLINE.items()))
def test_offline_task_splits_labels_and_determinism(name, classes):
    task = get_task(name)
    assert task.num_classes == classes
    sizes = task.split_sizes()
    for split in ("train", "test"):
        data = task.load(split)
        assert len(data) == sizes[split]
        assert data.labels.min() >= 0 and data.labels.max() < classes
        assert data.images[0].dtype == np.uint8 and data.images[0].ndim == 3
    assert sizes["train"] == min(1000, sizes["train"]) and sizes["test"] >= 100
    again = get_task(name).load("train")
    assert np.array_equal(np.asarray(again.images[:5]), np.asarray(task.load("train").images[:5]))
    assert len(np.unique(task.load("train").labels)) == classes  # every class present


def test_synth_labels_follow_the_rendered_factor():
    data = get_task("synth_dsprites_loc").load("train")
    imgs = np.asarray(data.images)[..., 0] > 0
    cols = np.array([np.nonzero(im.any(axis=0))[0].mean() for im in imgs])
    # the mean lit column grows with the x-position label
    assert np.corrcoef(cols, data.labels)[0, 1] > 0.95


def test_task_fingerprints_differ():
    prints = {get_task(n).fingerprint() for n in task_names()}
    assert len(prints) == len(task_names())


def _folder(root, classes, n=3, bad=None):
    for split in ("train", "test"):
        for c in classes:
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(d / f"{i}.png")
    if bad:
        (root / "train" / classes[0] / bad).write_bytes(b"not an image")


def test_imagefolder_loads(tmp_path):
    _folder(tmp_path, ["cat", "dog"])
    task = get_task(f"imagefolder:{tmp_path}")
    assert task.num_classes == 2 and task.split_sizes() == {"train": 6, "test": 6}
    data = task.load("test")
    assert data.images[0].shape == (8, 8, 3) and sorted(data.labels.tolist()) == [0, 0, 0, 1, 1, 1]


@pytest.mark.parametrize("case,match", [("missing", "does not exist"), ("one_class", "at least 2"),
                                        ("bad_image", "unreadable image .*broken.png"), ("empty", "holds no images")])
def test_imagefolder_refuses_bad_folders(tmp_path, case, match):
    if case == "one_class":
        _folder(tmp_path, ["only"])
    elif case == "bad_image":
        _folder(tmp_path, ["a", "b"], bad="broken.png")
    elif case == "empty":
        for s in ("train", "test"):
            for c in ("a", "b"):
                (tmp_path / s / c).mkdir(parents=True)
    path = tmp_path / "nope" if case == "missing" else tmp_path
    with pytest.raises(H2TError, match=match):
        get_task(f"imagefolder:{path}")


def test_one_registry_error_for_every_kind():
    """Tasks, backbones, methods: the same one line, with the closest name offered."""
    from head2toe.backbones import BACKBONES, get_spec
    from head2toe.methods import METHODS, get_method
    from head2toe.registry import Registry, UnknownName

    for lookup, name, close in [(get_task, "dsprites_lok", "dsprites_loc"), (get_spec, "resnet5", "resnet50"),
                                (get_method, "head2to", "head2toe")]:
        with pytest.raises(UnknownName) as e:
            lookup(name)
        kind = {get_task: "task", get_spec: "backbone", get_method: "method"}[lookup]
        assert str(e.value).startswith(f"unknown {kind} {name!r} (did you mean {close!r}?); choose one of: ")
        assert isinstance(e.value, H2TError) and isinstance(e.value, KeyError)
    assert "(did you mean" not in str(TASKS.unknown("zzz"))
    assert "finetune" in str(pytest.raises(H2TError, get_method, "nope").value)  # both kinds listed
    assert "resnet50" in BACKBONES and "nope" not in METHODS and set(task_names()) >= set(OFFLINE)
    reg = Registry("thing")
    reg.register("a", 1)
    with pytest.raises(ValueError, match="thing 'a' is already registered"):
        reg.register("a", 2)
    assert dict(reg) == {"a": 1} and reg.get("b") is None  # a Mapping: .get and `in` do not raise


def test_imagefolder_prefix_is_parsed_by_the_factory(tmp_path):
    from head2toe.tasks import PREFIXES, check_task
    from head2toe.tasks.imagefolder import ImageFolderTask

    assert PREFIXES == {"imagefolder": ImageFolderTask}
    with pytest.raises(H2TError, match="not found|does not exist|no such"):
        check_task(f"imagefolder:{tmp_path / 'missing'}")
    assert check_task("faces") == "faces"
    with pytest.raises(H2TError, match="unknown task 'imagefolders:x'"):
        check_task("imagefolders:x")  # a prefix only when it is one
