"""Linear probes trained many at a time.

Configurations that share a feature matrix and a training subset see the same mini-batch
sequence (it depends only on the seed and the subset), so they are trained as one wide
head: a single (B, F) x (F, K*C) matmul per step instead of K small ones. Adam and the
cosine schedule are applied per configuration, so a batch of configurations gives the
same heads as training each on its own.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from head2toe.errors import ProbeDiverged

PENALTIES = ("none", "l1", "l2", "group")
INITS = ("glorot", "zeros")  # glorot: the reference's Keras Dense (Glorot-uniform kernel, zero bias)
ADAM_BETA1, ADAM_BETA2, ADAM_EPS = 0.9, 0.999, 1e-7  # Keras' Adam defaults, as the reference trains
_GROUP_EPS = 1e-12


@dataclass(frozen=True)
class ProbeConfig:
    """One probe's optimisation settings."""

    lr: float
    steps: int
    penalty: str = "none"
    coef: float = 0.0
    batch_size: int = 128
    init: str = "glorot"

    def __post_init__(self) -> None:
        if self.init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {self.init!r}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a positive finite number, got {self.lr!r}")
        if int(self.steps) != self.steps or self.steps <= 0:
            raise ValueError(f"steps must be a positive integer, got {self.steps!r}")
        if self.penalty not in PENALTIES:
            raise ValueError(f"penalty must be one of {PENALTIES}, got {self.penalty!r}")
        if self.coef < 0:
            raise ValueError(f"coef must be >= 0, got {self.coef!r}")


@dataclass
class Probe:
    """A trained linear head: logits = x @ weight + bias."""

    weight: torch.Tensor  # (F, C)
    bias: torch.Tensor  # (C,)
    final_loss: float

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(self.weight.device, torch.float32) @ self.weight + self.bias

    def accuracy(self, x: torch.Tensor, y: torch.Tensor | np.ndarray) -> float:
        pred = self.logits(x).argmax(dim=1).cpu()
        return float((pred == torch.tensor(np.asarray(y))).float().mean())

    def feature_scores(self) -> np.ndarray:
        """Head2Toe's relevance score per input feature: sum_j W_ij^2."""
        return (self.weight.double() ** 2).sum(dim=1).cpu().numpy()


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def batch_schedule(n: int, steps: int, batch_size: int, seed: int) -> torch.Tensor:
    """Mini-batch row indices (steps, B) into a subset of n rows: shuffled epochs, seeded.

    A longer run's schedule extends a shorter one's, so configurations that differ only in
    steps share their batches.
    """
    b = min(batch_size, n)
    gen = torch.Generator().manual_seed(int(seed))
    need = steps * b
    perms = [torch.randperm(n, generator=gen) for _ in range(-(-need // n))]
    return torch.cat(perms)[:need].view(steps, b)


def glorot_uniform(fan_in: int, fan_out: int, seed: int) -> torch.Tensor:
    """(fan_in, fan_out) weights ~ U(-a, a), a = sqrt(6 / (fan_in + fan_out)), from `seed` alone
    (so a head's start does not depend on the other heads trained beside it)."""
    gen = torch.Generator().manual_seed(int(seed) + 0x5EED)
    bound = math.sqrt(6.0 / (fan_in + fan_out))
    return torch.rand(fan_in, fan_out, generator=gen).mul_(2 * bound).sub_(bound)


def _penalty(w: torch.Tensor, kinds: list[str], coefs: torch.Tensor) -> torch.Tensor:
    """Sum over heads of coef_k * penalty_k(W_k); w is (F, K, C). The value only: training
    uses its closed-form gradient, `_add_penalty_grad_`."""
    total = w.new_zeros(())
    for kind in set(kinds):
        mask = torch.tensor([k == kind for k in kinds], device=w.device)
        if kind == "none" or not bool(mask.any()):
            continue
        c = coefs * mask
        if kind == "l1":
            per_head = w.abs().sum(dim=(0, 2))
        elif kind == "l2":
            per_head = (w * w).sum(dim=(0, 2))
        else:  # group lasso: sum_i ||W_i,:||_2
            per_head = ((w * w).sum(dim=2) + _GROUP_EPS).sqrt().sum(dim=0)
        total = total + (c * per_head).sum()
    return total


def _add_penalty_grad_(g: torch.Tensor, w: torch.Tensor, configs: list[ProbeConfig], head_dim: int) -> None:
    """g += d penalty / dW, in closed form (what autograd gives for `_penalty`): l1 coef*sign(W),
    l2 2*coef*W, group coef*W_i / sqrt(||W_i||^2 + eps). w and g are (F, K, C) or (K, F, C)
    with heads along `head_dim`; one pass for all group-lasso heads, one per l1/l2 head."""
    group = [c.coef if c.penalty == "group" else 0.0 for c in configs]
    if any(group):
        shape = [len(configs) if d == head_dim else 1 for d in range(2)]
        scale = torch.tensor(group, device=w.device).view(shape)
        inv_norm = torch.linalg.vector_norm(w, dim=2).square_().add_(_GROUP_EPS).rsqrt_()
        g.addcmul_(w, inv_norm.mul_(scale).unsqueeze(2))
    for i, c in enumerate(configs):
        if c.penalty == "l1" and c.coef:
            g.select(head_dim, i).add_(w.select(head_dim, i).sign(), alpha=c.coef)
        elif c.penalty == "l2" and c.coef:
            g.select(head_dim, i).add_(w.select(head_dim, i), alpha=2 * c.coef)


def cosine_lr(config: ProbeConfig, t: int) -> float:
    """The learning rate of step t (0-based): Keras' CosineDecay(lr, steps), 0 from `steps` on."""
    return config.lr * 0.5 * (1 + math.cos(math.pi * t / config.steps)) if t < config.steps else 0.0


def _adam_unit_step(upd: list[torch.Tensor], grads: list[torch.Tensor], moments: tuple[list, list], t: torch.Tensor) -> None:
    """upd = -m_hat / (sqrt(v_hat) + eps): one Adam step at lr 1 from zero, moments updated in
    place, in one fused pass per tensor (the kernel behind torch.optim.Adam(fused=True),
    called directly: the optimizer class would import torch._dynamo, seconds per process).
    Adam's step is linear in lr, so each head then adds its own lr times its part of upd."""
    for u in upd:
        u.zero_()
    t.add_(1)
    torch._fused_adam_(upd, grads, moments[0], moments[1], [], [t] * len(upd), lr=1.0, beta1=ADAM_BETA1,
                       beta2=ADAM_BETA2, weight_decay=0.0, eps=ADAM_EPS, amsgrad=False, maximize=False)


def _train_group(
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    configs: list[ProbeConfig],
    seed: int,
    rows: torch.Tensor | None = None,
) -> list[Probe]:
    """Train heads on one batch sequence. x is (N, F), shared by all heads (one wide matmul),
    or (K, N, F), one matrix per head of equal width (one batched matmul). With `rows`, only
    those rows of x are trained on (the batches index x directly: no copy of the subset).

    One step, without autograd: gather the batch into a reused buffer (once for all heads),
    logits by one matmul, the cross-entropy gradient in closed form (softmax - onehot) / B,
    dL/dW by one matmul into a reused buffer, the penalty's gradient in closed form, then one
    fused Adam pass (torch.optim.Adam(fused=True), Keras' eps) that writes the unit-lr update
    -m_hat / (sqrt(v_hat) + eps) of every head, which each head adds scaled by its own cosine lr
    (`_adam_unit_step`).
    """
    device = x.device
    stacked = x.dim() == 3
    n, f = x.shape[-2:]
    if rows is not None:
        n = len(rows)
    k, c = len(configs), num_classes
    max_steps = max(cfg.steps for cfg in configs)
    sched = batch_schedule(n, max_steps, configs[0].batch_size, seed).to(device)
    if rows is not None:
        sched = rows[sched]
    bsz = sched.shape[1]
    head_dim = 0 if stacked else 1  # w: (K, F, C) stacked (one bmm), (F, K, C) wide (one (F, K*C) matmul)
    w = torch.zeros((k, f, c) if stacked else (f, k, c), device=device)
    glorot = [i for i, cfg in enumerate(configs) if cfg.init == "glorot"]
    if glorot:
        init = glorot_uniform(f, c, seed).to(device)
        for i in glorot:
            w.select(head_dim, i).copy_(init)
    b = torch.zeros(k, c, device=device)
    xb = torch.empty((k, bsz, f) if stacked else (bsz, f), device=device)
    logits = torch.empty((k, bsz, c) if stacked else (bsz, k * c), device=device)
    gw = torch.empty_like(w)
    gb = torch.empty_like(b)
    upd = [torch.zeros_like(w), torch.zeros_like(b)]  # Adam's step at unit lr, then scaled per head
    moments = [torch.zeros_like(w), torch.zeros_like(b)], [torch.zeros_like(w), torch.zeros_like(b)]
    adam_t = torch.zeros((), device=device)
    batch_dim = 1 if stacked else 0  # of the (K, B, C) / (B, K, C) logits
    y_sched = y[sched]
    minus_one = torch.full((1, 1, 1), -1.0, device=device)
    last_loss = torch.zeros(k, device=device)
    ends = {cfg.steps - 1: [] for cfg in configs}
    for i, cfg in enumerate(configs):
        ends[cfg.steps - 1].append(i)
    for t in range(max_steps):
        idx = sched[t]
        torch.index_select(x, 1 if stacked else 0, idx, out=xb)
        if stacked:
            torch.baddbmm(b.unsqueeze(1), xb, w, out=logits)
            lg = logits
            yi = y_sched[t].view(1, bsz, 1).expand(k, bsz, 1)
        else:
            torch.addmm(b.view(-1), xb, w.view(f, k * c), out=logits)
            lg = logits.view(bsz, k, c)
            yi = y_sched[t].view(bsz, 1, 1).expand(bsz, k, 1)
        logp = torch.log_softmax(lg, dim=2)
        for i in ends.get(t, ()):
            last_loss[i] = -logp.gather(2, yi).mean(batch_dim).view(k)[i]
        grad = logp.exp_().scatter_add_(2, yi, minus_one.expand_as(yi)).div_(bsz)  # d mean-CE / d logits
        if stacked:
            torch.bmm(xb.transpose(1, 2), grad, out=gw)
        else:
            torch.mm(xb.t(), grad.view(bsz, k * c), out=gw.view(f, k * c))
        torch.sum(grad, dim=batch_dim, out=gb)
        _add_penalty_grad_(gw, w, configs, head_dim)
        _adam_unit_step(upd, [gw, gb], moments, adam_t)
        for i, cfg in enumerate(configs):
            lr = cosine_lr(cfg, t)
            if lr:
                w.select(head_dim, i).add_(upd[0].select(head_dim, i), alpha=lr)
                b[i].add_(upd[1][i], alpha=lr)
    for i, cfg in enumerate(configs):  # a diverged head is a failure, never a chance-level "result"
        wi = w.select(head_dim, i)
        final = last_loss[i] + _penalty(wi.unsqueeze(1), [cfg.penalty], torch.tensor([cfg.coef], device=device))
        if not (torch.isfinite(final) and torch.isfinite(wi).all() and torch.isfinite(b[i]).all()):
            raise ProbeDiverged(f"probe diverged (final loss {float(final):g}, non-finite loss or weights) with lr={cfg.lr} "
                                f"steps={cfg.steps} penalty={cfg.penalty} coef={cfg.coef}; lower lr or coef")
    return [Probe(w.select(head_dim, i).clone(), b[i].clone(), float(last_loss[i])) for i in range(k)]


def train_probes_stacked(
    xs: list[torch.Tensor],
    y: torch.Tensor | np.ndarray,
    num_classes: int,
    configs: list[ProbeConfig],
    seed: int = 0,
    device: torch.device | str | None = None,
) -> list[Probe]:
    """One probe per (matrix, config) pair, all of equal width, trained as one batched matmul.

    Head2Toe's second stage: each hp kept a different feature subset of the same size.
    Gives the same heads as `train_probes` on each matrix alone.
    """
    if len(xs) != len(configs) or not xs:
        raise ValueError(f"need one config per matrix, got {len(xs)} matrices and {len(configs)} configs")
    if len({tuple(x.shape) for x in xs}) != 1 or len({c.batch_size for c in configs}) != 1:
        raise ValueError("stacked probes need matrices of one shape and one batch size")
    device = torch.device(device) if device is not None else default_device()
    x = torch.stack([torch.as_tensor(m, dtype=torch.float32) for m in xs]).to(device)
    y = torch.tensor(np.asarray(y), dtype=torch.long, device=device)
    return _train_group(x, y, num_classes, configs, seed)


def train_probes(
    x: torch.Tensor | np.ndarray,
    y: torch.Tensor | np.ndarray,
    num_classes: int,
    configs: list[ProbeConfig],
    seed: int = 0,
    device: torch.device | str | None = None,
    max_heads: int = 32,
    rows: np.ndarray | None = None,
) -> list[Probe]:
    """Train one probe per config on all rows of x (or only `rows`: a CV fold of one shared
    matrix, same heads as training on `x[rows]`); heads of equal batch size train together.

    Deterministic given `seed`: the result for a config does not depend on which other
    configs it was trained with.
    """
    if not configs:
        return []
    device = torch.device(device) if device is not None else default_device()
    x = torch.as_tensor(x).to(device, torch.float32)
    y = torch.tensor(np.asarray(y), dtype=torch.long, device=device)
    if x.dim() != 2 or len(x) != len(y):
        raise ValueError(f"x must be (N, F) with N = len(y); got {tuple(x.shape)} and {len(y)} labels")
    subset = None if rows is None else torch.as_tensor(np.asarray(rows), dtype=torch.long, device=device)
    used = y if subset is None else y[subset]
    if len(used) == 0:
        raise ValueError("cannot train a probe on 0 examples")
    if int(used.min()) < 0 or int(used.max()) >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes}); got range [{int(used.min())}, {int(used.max())}]")
    out: list[Probe | None] = [None] * len(configs)
    by_batch: dict[int, list[int]] = {}
    for i, c in enumerate(configs):
        by_batch.setdefault(c.batch_size, []).append(i)
    for members in by_batch.values():
        for start in range(0, len(members), max_heads):
            chunk = members[start : start + max_heads]
            probes = _train_group(x, y, num_classes, [configs[i] for i in chunk], seed, subset)
            for i, p in zip(chunk, probes):
                out[i] = p
    return out  # type: ignore[return-value]
