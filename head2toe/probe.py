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
import torch.nn.functional as F

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
    """Sum over heads of coef_k * penalty_k(W_k); w is (F, K, C)."""
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
    those rows of x are trained on (the batches index x directly: no copy of the subset)."""
    device = x.device
    stacked = x.dim() == 3
    n, f = x.shape[-2:]
    if rows is not None:
        n = len(rows)
    k = len(configs)
    steps = [c.steps for c in configs]
    max_steps = max(steps)
    sched = batch_schedule(n, max_steps, configs[0].batch_size, seed).to(device)
    if rows is not None:
        sched = rows[sched]
    w = torch.zeros(f, k, num_classes, device=device)
    glorot = [i for i, c in enumerate(configs) if c.init == "glorot"]
    if glorot:
        w[:, glorot, :] = glorot_uniform(f, num_classes, seed).to(device)[:, None, :]
    w.requires_grad_(True)
    b = torch.zeros(k, num_classes, device=device, requires_grad=True)
    params = (w, b)
    m = [torch.zeros_like(p) for p in params]
    v = [torch.zeros_like(p) for p in params]
    beta1, beta2, eps = ADAM_BETA1, ADAM_BETA2, ADAM_EPS
    base_lr = torch.tensor([c.lr for c in configs], device=device)
    total_steps = torch.tensor(steps, device=device, dtype=torch.float32)
    coefs = torch.tensor([c.coef for c in configs], device=device)
    kinds = [c.penalty for c in configs]
    last_loss = torch.zeros(k, device=device)
    for t in range(max_steps):
        idx = sched[t]
        yb = y[idx]
        if stacked:
            logits = torch.bmm(x[:, idx], w.permute(1, 0, 2)).permute(1, 0, 2) + b
        else:
            logits = (x[idx] @ w.view(f, k * num_classes)).view(-1, k, num_classes) + b
        ce = F.cross_entropy(logits.permute(0, 2, 1), yb[:, None].expand(-1, k), reduction="none").mean(0)
        loss = ce.sum() + _penalty(w, kinds, coefs)
        gw, gb = torch.autograd.grad(loss, params)
        active = (t < total_steps).float()
        lr = base_lr * 0.5 * (1 + torch.cos(math.pi * torch.clamp(t / total_steps, max=1.0))) * active
        with torch.no_grad():
            last_loss = torch.where(active.bool(), ce.detach(), last_loss)
            for i, (p, g) in enumerate(zip(params, (gw, gb))):
                m[i].mul_(beta1).add_(g, alpha=1 - beta1)
                v[i].mul_(beta2).addcmul_(g, g, value=1 - beta2)
                mhat = m[i] / (1 - beta1 ** (t + 1))
                vhat = v[i] / (1 - beta2 ** (t + 1))
                step_lr = lr.view(1, k, 1) if p is w else lr.view(k, 1)
                p.sub_(step_lr * mhat / (vhat.sqrt() + eps))
    w, b = w.detach(), b.detach()
    for i, c in enumerate(configs):  # a diverged head is a failure, never a chance-level "result"
        final = last_loss[i] + _penalty(w[:, i : i + 1], [c.penalty], coefs[i : i + 1])
        if not (torch.isfinite(final) and torch.isfinite(w[:, i]).all() and torch.isfinite(b[i]).all()):
            raise ProbeDiverged(f"probe diverged (final loss {float(final):g}, non-finite loss or weights) with lr={c.lr} "
                                f"steps={c.steps} penalty={c.penalty} coef={c.coef}; lower lr or coef")
    return [Probe(w[:, i, :].contiguous(), b[i].clone(), float(last_loss[i])) for i in range(k)]


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
