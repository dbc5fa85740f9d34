import numpy as np
import pytest
import torch

from head2toe.probe import ProbeConfig, batch_schedule, train_probes


def blobs(n=300, f=20, c=3, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(c, f)) * 3
    y = rng.integers(0, c, n)
    x = centers[y] + rng.normal(size=(n, f))
    return torch.tensor(x, dtype=torch.float32), torch.tensor(y)


def test_learns_separable_data_and_is_deterministic():
    x, y = blobs()
    cfg = [ProbeConfig(lr=0.05, steps=100)]
    a = train_probes(x, y, 3, cfg, seed=3, device="cpu")[0]
    b = train_probes(x, y, 3, cfg, seed=3, device="cpu")[0]
    assert a.accuracy(x, y) > 0.95
    assert torch.equal(a.weight, b.weight)
    c = train_probes(x, y, 3, cfg, seed=4, device="cpu")[0]
    assert not torch.equal(a.weight, c.weight)


def test_batched_configs_equal_one_by_one():
    x, y = blobs(f=30)
    configs = [ProbeConfig(0.01, 60, "group", 1e-3), ProbeConfig(0.1, 40, "l2", 1e-4), ProbeConfig(0.05, 80, "l1", 1e-4), ProbeConfig(0.02, 50)]
    together = train_probes(x, y, 3, configs, seed=0, device="cpu")
    for cfg, t in zip(configs, together):
        (alone,) = train_probes(x, y, 3, [cfg], seed=0, device="cpu")
        assert torch.allclose(alone.weight, t.weight, atol=1e-5), cfg
        assert torch.allclose(alone.bias, t.bias, atol=1e-5)


def test_group_lasso_zeroes_uninformative_rows():
    x, y = blobs(f=10)
    noise = torch.randn(len(x), 40) * 0.1
    xx = torch.cat([x, noise], dim=1)
    (plain,) = train_probes(xx, y, 3, [ProbeConfig(0.05, 300)], seed=0, device="cpu")
    (group,) = train_probes(xx, y, 3, [ProbeConfig(0.05, 300, "group", 0.02)], seed=0, device="cpu")
    s_plain, s_group = plain.feature_scores(), group.feature_scores()
    # the penalty shrinks the noise block far more than the signal block
    assert s_group[10:].mean() / s_group[:10].mean() < 0.2 * s_plain[10:].mean() / s_plain[:10].mean()


def test_schedule_prefix_property_and_epochs():
    long, short = batch_schedule(50, 10, 16, seed=1), batch_schedule(50, 4, 16, seed=1)
    assert torch.equal(long[:4], short)
    first_epoch = batch_schedule(48, 3, 16, seed=0).flatten()
    assert sorted(first_epoch.tolist()) == list(range(48))


@pytest.mark.parametrize("kwargs,match", [(dict(lr=0, steps=1), "lr"), (dict(lr=0.1, steps=0), "steps"),
                                          (dict(lr=0.1, steps=1, penalty="l3"), "penalty"), (dict(lr=0.1, steps=1, coef=-1), "coef")])
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ProbeConfig(**kwargs)


def test_label_range_checked():
    x, y = blobs()
    with pytest.raises(ValueError, match="labels must lie in"):
        train_probes(x, y, 2, [ProbeConfig(0.1, 1)], device="cpu")


def test_stacked_probes_equal_separate_training():
    from head2toe.probe import train_probes_stacked

    x, y = blobs(f=12)
    xs = [x[:, :6], x[:, 6:]]
    configs = [ProbeConfig(0.05, 50), ProbeConfig(0.02, 30)]
    stacked = train_probes_stacked(xs, y, 3, configs, seed=2, device="cpu")
    for xi, cfg, p in zip(xs, configs, stacked):
        (alone,) = train_probes(xi, y, 3, [cfg], seed=2, device="cpu")
        assert torch.allclose(alone.weight, p.weight, atol=1e-5)
