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


# ---- the optimiser and loss pinned against independent implementations


def _torch_reference(x, y, num_classes, lr, steps, penalty, coef, seed, init):
    """The same probe written with autograd, torch.optim.Adam (Keras' eps 1e-7) and a cosine LambdaLR."""
    import math

    from head2toe.probe import glorot_uniform

    f = x.shape[1]
    w = torch.nn.Parameter(glorot_uniform(f, num_classes, seed) if init == "glorot" else torch.zeros(f, num_classes))
    b = torch.nn.Parameter(torch.zeros(num_classes))
    opt = torch.optim.Adam([w, b], lr=lr, betas=(0.9, 0.999), eps=1e-7)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.5 * (1 + math.cos(math.pi * min(t, steps) / steps)))
    for idx in batch_schedule(len(x), steps, 128, seed):
        loss = torch.nn.functional.cross_entropy(x[idx] @ w + b, y[idx])
        if penalty == "group":
            loss = loss + coef * w.norm(dim=1).sum()
        elif penalty == "l1":
            loss = loss + coef * w.abs().sum()
        elif penalty == "l2":
            loss = loss + coef * (w * w).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return w.detach(), b.detach()


@pytest.mark.parametrize("penalty,coef,init", [("none", 0.0, "glorot"), ("group", 1e-3, "glorot"), ("group", 1e-3, "zeros")])
def test_probe_equals_torch_adam_with_cosine_lambdalr(penalty, coef, init):
    x, y = blobs(n=300, f=12)
    (p,) = train_probes(x, y, 3, [ProbeConfig(0.05, 50, penalty, coef, init=init)], seed=5, device="cpu")
    w, b = _torch_reference(x, y, 3, 0.05, 50, penalty, coef, seed=5, init=init)
    assert torch.allclose(p.weight, w, atol=1e-5) and torch.allclose(p.bias, b, atol=1e-5)
    # and it is not trivially so: other Adam constants or another schedule move the weights
    w_eps8 = _torch_reference(x, y, 3, 0.05, 60, penalty, coef, seed=5, init=init)[0]
    assert not torch.allclose(p.weight, w_eps8, atol=1e-5)


def test_penalty_value_and_gradient_equal_the_closed_form():
    from head2toe.probe import _penalty

    w = torch.tensor([[3.0, 4.0], [0.0, 0.0], [-1.0, 0.0]])[:, None, :].repeat(1, 3, 1).requires_grad_(True)  # (F=3, K=3, C=2)
    coefs = torch.tensor([0.5, 0.25, 2.0])
    total = _penalty(w, ["group", "l1", "l2"], coefs)
    value = float(total.detach())
    # group: 0.5 * (5 + 0 + 1); l1: 0.25 * (3 + 4 + 1); l2: 2 * (9 + 16 + 1)
    assert value == pytest.approx(0.5 * 6 + 0.25 * 8 + 2.0 * 26, rel=1e-6)
    (g,) = torch.autograd.grad(total, w)
    assert torch.allclose(g[:, 0], 0.5 * torch.tensor([[0.6, 0.8], [0.0, 0.0], [-1.0, 0.0]]), atol=1e-6)  # W_i / ||W_i||, 0 at 0
    assert torch.allclose(g[:, 1], 0.25 * torch.tensor([[1.0, 1.0], [0.0, 0.0], [-1.0, 0.0]]))
    assert torch.allclose(g[:, 2], 2.0 * 2 * w[:, 2].detach())


def test_glorot_init_is_keras_dense_and_depends_only_on_the_seed():
    from head2toe.probe import glorot_uniform

    w = glorot_uniform(4000, 10, seed=1)
    bound = (6 / 4010) ** 0.5
    assert float(w.abs().max()) <= bound and float(w.abs().max()) > 0.99 * bound
    assert float(w.std()) == pytest.approx(bound / 3 ** 0.5, rel=0.02)  # U(-a, a) has std a / sqrt(3)
    assert torch.equal(w, glorot_uniform(4000, 10, seed=1)) and not torch.equal(w, glorot_uniform(4000, 10, seed=2))
    x, y = blobs(f=30)
    configs = [ProbeConfig(0.05, 30, init="zeros"), ProbeConfig(0.05, 30, init="glorot")]
    mixed = train_probes(x, y, 3, configs, seed=0, device="cpu")
    for cfg, t in zip(configs, mixed):
        (alone,) = train_probes(x, y, 3, [cfg], seed=0, device="cpu")
        assert torch.allclose(alone.weight, t.weight, atol=1e-6)
    assert not torch.allclose(mixed[0].weight, mixed[1].weight, atol=1e-3)
    with pytest.raises(ValueError, match="init must be one of"):
        ProbeConfig(0.1, 10, init="ones")


MIXED = [ProbeConfig(0.05, 30, "group", 1e-2), ProbeConfig(0.02, 20, "l1", 1e-3), ProbeConfig(0.1, 25, "l2", 1e-2),
         ProbeConfig(0.05, 30, init="zeros")]


@pytest.mark.parametrize("path", ["wide", "rows", "stacked"])
def test_fast_step_equals_autograd_adam_for_every_head(path):
    """The closed-form gradients + fused Adam step equal autograd + torch.optim.Adam, head by
    head (float32, atol 1e-5 on weights of ~0.1), for heads of mixed penalty, lr, steps and init
    trained side by side: as one wide head, on a fold's rows, and stacked on their own matrices."""
    from head2toe.probe import train_probes_stacked

    x, y = blobs(n=200, f=24)
    rows = np.arange(0, 200, 3)
    if path == "wide":
        heads = train_probes(x, y, 3, MIXED, seed=1, device="cpu")
        refs = [_torch_reference(x, y, 3, c.lr, c.steps, c.penalty, c.coef, 1, c.init) for c in MIXED]
    elif path == "rows":
        heads = train_probes(x, y, 3, MIXED, seed=1, device="cpu", rows=rows)
        refs = [_torch_reference(x[rows], y[rows], 3, c.lr, c.steps, c.penalty, c.coef, 1, c.init) for c in MIXED]
    else:
        xs = [x[:, i::4] for i in range(4)]  # four (N, 6) matrices
        heads = train_probes_stacked(xs, y, 3, MIXED, seed=1, device="cpu")
        refs = [_torch_reference(xi, y, 3, c.lr, c.steps, c.penalty, c.coef, 1, c.init) for xi, c in zip(xs, MIXED)]
    for cfg, head, (w, b) in zip(MIXED, heads, refs):
        assert torch.allclose(head.weight, w, atol=1e-5) and torch.allclose(head.bias, b, atol=1e-5), cfg


def test_same_seed_same_bits():
    """Determinism on one machine: the same call twice gives bitwise the same heads."""
    x, y = blobs(n=200, f=24)
    a = train_probes(x, y, 3, MIXED, seed=7, device="cpu")
    b = train_probes(x, y, 3, MIXED, seed=7, device="cpu")
    for p, q in zip(a, b):
        assert torch.equal(p.weight, q.weight) and torch.equal(p.bias, q.bias) and p.final_loss == q.final_loss
