import numpy as np
import pytest

from head2toe.protocol import choose_best, cv_folds, expand_grid


def test_vtab_folds_are_200_blocks_of_the_first_1000():
    folds = cv_folds(1000)
    assert len(folds) == 5
    for k, (train, val) in enumerate(folds):
        assert val.tolist() == list(range(200 * k, 200 * k + 200))
        assert len(train) == 800 and not set(train) & set(val)
        assert set(train) | set(val) == set(range(1000))


def test_larger_sets_use_only_the_first_1000_and_small_sets_fifths():
    assert max(np.concatenate(cv_folds(5000)[4])) == 999
    folds = cv_folds(100)
    assert [v.tolist()[:2] for _, v in folds] == [[0, 1], [20, 21], [40, 41], [60, 61], [80, 81]]
    assert all(len(t) == 80 for t, _ in folds)
    with pytest.raises(ValueError):
        cv_folds(3)


def test_choose_best_by_mean_with_deterministic_ties():
    rows = []
    for fold in range(5):
        rows.append(dict(lr=0.1, steps=500, coef=0.0, target_size=512, keep_fraction=None, fold=fold, accuracy=0.5 + 0.01 * fold))
        rows.append(dict(lr=0.01, steps=500, coef=0.0, target_size=512, keep_fraction=None, fold=fold, accuracy=0.6 if fold else 0.1))
    best = choose_best(rows)
    assert best["lr"] == 0.1 and best["mean_accuracy"] == pytest.approx(0.52) and best["n_folds"] == 5
    tie = [dict(lr=lr, steps=500, coef=0.0, target_size=512, keep_fraction=None, fold=0, accuracy=0.7) for lr in (0.1, 0.01)]
    assert choose_best(tie)["lr"] == 0.01 == choose_best(tie[::-1])["lr"]


def test_grid_order_and_size():
    g = expand_grid([0.1, 0.01], [500, 5000], [1e-4, 1e-3], [512, 1024], [0.01, 0.1])
    assert len(g) == 16 and g[0].target_size == 512 and g[-1].target_size == 1024
    assert all(h.keep_fractions == (0.01, 0.1) for h in g)


def test_cross_validation_reads_the_tasks_cv_split_and_the_final_run_train():
    """VTAB tasks validate on train1000 (the reference's folds) but finally train on train800val200."""
    from head2toe.backbones import create_backbone
    from head2toe.evaluate import cross_validate, final_run
    from head2toe.methods import HParams, get_method
    from head2toe.provider import FeatureProvider
    from head2toe.tasks.base import ImageSplit, Task

    sizes = {"train": 40, "test": 20, "train1000": 30}

    class TwoSources(Task):
        name, num_classes, cv_split = "two_sources", 2, "train1000"

        def split_sizes(self):
            return dict(sizes)

        def load(self, split):
            rng = np.random.default_rng(len(split))
            return ImageSplit(rng.integers(0, 256, (sizes[split], 16, 16, 3), dtype=np.uint8), np.arange(sizes[split]) % 2)

    provider = FeatureProvider(create_backbone("efficientnet_lite0", weights="random", input_size=32), progress=False)
    task, method, hp = TwoSources(), get_method("linear"), HParams(0.1, 5, 0.0, 64)
    cross_validate(provider, task, method, [hp], folds=[0])
    assert provider.forward_passes == sizes["train1000"]
    final_run(provider, task, method, hp)
    assert provider.forward_passes == sum(sizes.values())
