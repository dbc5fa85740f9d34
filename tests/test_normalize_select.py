import numpy as np
import pytest
import torch

from head2toe.features import LayerFeatures
from head2toe.normalize import unit_normalize
from head2toe.probe import Probe
from head2toe.selection import count_kept, n_keep, select_features, select_layers


def test_unit_norm_zero_aware():
    x = np.array([[3.0, 4.0], [0.0, 0.0], [1e-30, 0.0]], np.float32)
    out = unit_normalize(x)
    assert np.allclose(out[0], [0.6, 0.8])
    assert np.all(out[1] == 0) and np.isfinite(out).all()
    t = unit_normalize(torch.tensor(x))
    assert torch.allclose(t, torch.from_numpy(out))


def test_matrix_normalises_each_layer_then_renormalises_kept():
    rng = np.random.default_rng(0)
    feats = LayerFeatures({"a": rng.normal(size=(5, 4)), "b": rng.normal(size=(5, 3)) * 100}, np.zeros(5))
    m = feats.matrix().numpy()
    assert m.shape == (5, 7)
    assert np.allclose(np.linalg.norm(m[:, :4], axis=1), 1) and np.allclose(np.linalg.norm(m[:, 4:], axis=1), 1)
    kept = {"a": np.array([1, 3]), "b": np.array([0])}
    ms = feats.matrix(kept).numpy()
    assert ms.shape == (5, 3)
    # each layer's kept block is re-normalised to unit norm (not a slice of the full normalised matrix)
    assert np.allclose(np.linalg.norm(ms[:, :2], axis=1), 1)
    assert np.allclose(np.abs(ms[:, 2]), 1)
    expected_a = feats.layers["a"][:, [1, 3]] / np.linalg.norm(feats.layers["a"][:, [1, 3]], axis=1, keepdims=True)
    assert np.allclose(ms[:, :2], expected_a, atol=1e-6)


def test_group_lasso_scores_are_row_sums_of_squares():
    w = torch.tensor([[1.0, 2.0], [0.0, 0.0], [3.0, -1.0]])
    p = Probe(w, torch.zeros(2), 0.0)
    assert p.feature_scores().tolist() == [5.0, 0.0, 10.0]


@pytest.mark.parametrize("fraction,expected", [(0.01, 1), (0.1, 10), (0.25, 25), (1.0, 100), (0.005, 1)])
def test_selection_counts(fraction, expected):
    rng = np.random.default_rng(1)
    scores = rng.random(100)
    widths = {"l1": 30, "l2": 50, "l3": 20}
    kept = select_features(scores, widths, fraction)
    assert count_kept(kept) == expected == n_keep(100, fraction)
    # the kept features are exactly the top-scoring ones
    flat = np.concatenate([kept["l1"], kept["l2"] + 30, kept["l3"] + 80])
    assert set(flat) == set(np.argsort(-scores)[:expected])


@pytest.mark.parametrize("fraction,expected", [
    (0.5, {"a": 0, "b": 20, "c": 10}),  # budget 30: best layer b whole, then c (next by mean) its first 10
    (0.2, {"a": 0, "b": 12, "c": 0}),  # budget 12: inside the best layer
    (0.9, {"a": 4, "b": 20, "c": 30}),  # budget 54: b, c whole, then a's first 4
])
def test_select_layers_ranks_layers_by_mean_score_at_the_features_budget(fraction, expected):
    widths = {"a": 10, "b": 20, "c": 30}
    rng = np.random.default_rng(0)
    scores = np.concatenate([rng.uniform(0, 1, 10), rng.uniform(2, 4, 20), rng.uniform(1, 2, 30)])
    kept = select_layers(scores, widths, fraction)
    assert {k: len(v) for k, v in kept.items()} == expected
    assert count_kept(kept) == n_keep(60, fraction) == count_kept(select_features(scores, widths, fraction))
    for name, n in expected.items():  # a layer cut at the budget keeps its first columns, not its best
        assert list(kept[name]) == list(range(n))


def test_bad_fraction():
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        n_keep(10, 0)
