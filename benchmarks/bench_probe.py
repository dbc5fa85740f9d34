"""Probe training vs its bound, on one thread, all measured in one run (these machines are noisy).

The bound is what a step cannot avoid: gathering the (B, F) mini-batch and the two matmuls of
the same shapes (logits = x_b @ W, dL/dW = x_b^T @ G), into reused buffers. The probe's step
time is compared with it (goal: bound / actual >= 0.6), for

- before: `head2toe/probe.py` as of `--base` (default bc8f956, autograd + hand-written Adam),
  read with `git show` into a temporary directory and imported from there;
- after: this tree's `head2toe.probe`;

and each lever on its own (ms per step, old way vs new way): the gather, the cross-entropy
and matmul gradient by autograd vs closed form, the penalty's gradient, the Adam step, and
bf16 matmuls; the last also as whole training runs (float32 probe vs a bf16-matmul copy of its
step, `train_wide_bf16`) with their test accuracy on a synthetic task of the same shape.

Each timing is the minimum over `--repeats` interleaved runs, in CPU seconds of the process (on
one thread that leaves out the time other jobs held the core; wall seconds are printed too).

Run: `.venv/bin/python -m head2toe.allocator -- .venv/bin/python benchmarks/bench_probe.py`
(defaults: the issue's shape, N=800, F=28,300, C=16, 2 group-lasso heads, 100 steps).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent


def load_base_probe(rev: str):
    """The probe module as of git revision `rev`, imported from a temporary directory."""
    src = subprocess.run(["git", "show", f"{rev}:head2toe/probe.py"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    path = Path(tempfile.mkdtemp(prefix="h2t_probe_base_")) / "probe_base.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("probe_base", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def timed(fn) -> tuple[float, float]:
    """(CPU seconds of this process, wall seconds) of one call. On one thread the CPU time
    leaves out the time other jobs on the machine held the core, so it is the steadier one."""
    cpu, wall = time.process_time(), time.perf_counter()
    fn()
    return time.process_time() - cpu, time.perf_counter() - wall


def bound_fn(x: torch.Tensor, sched: torch.Tensor, width: int, stacked: bool):
    """Gathers and matmuls of a training run's shapes, nothing else."""
    k = x.shape[0] if stacked else 1
    f, bsz = x.shape[-1], sched.shape[1]
    c = width // k
    w = torch.randn((k, f, c) if stacked else (f, width)) * 0.01
    g_logits = torch.randn((k, bsz, c) if stacked else (bsz, width))
    xb = torch.empty((k, bsz, f) if stacked else (bsz, f))
    logits, gw = torch.empty_like(g_logits), torch.empty_like(w)

    def run():
        for idx in sched:
            if stacked:
                torch.index_select(x, 1, idx, out=xb)
                torch.bmm(xb, w, out=logits)
                torch.bmm(xb.transpose(1, 2), g_logits, out=gw)
            else:
                torch.index_select(x, 0, idx, out=xb)
                torch.mm(xb, w, out=logits)
                torch.mm(xb.t(), g_logits, out=gw)
    return run


def per_step_ms(fn, steps: int, repeats: int) -> float:
    fn()
    return min(timed(fn)[0] for _ in range(repeats)) / steps * 1e3


def levers(x: torch.Tensor, sched: torch.Tensor, k: int, c: int, repeats: int) -> dict:
    """Each lever on its own, ms per step (old way, new way)."""
    from head2toe.probe import ADAM_EPS, ProbeConfig, _add_penalty_grad_, _penalty

    f, bsz, steps = x.shape[1], sched.shape[1], 20
    idx = sched[:steps]
    w = (torch.randn(f, k, c) * 0.01).requires_grad_(True)
    y = torch.randint(0, c, (x.shape[0],))
    xb = torch.empty(bsz, f)
    gw = torch.empty(f, k, c)
    cfgs = [ProbeConfig(0.1, 100, "group", 1e-3)] * k
    coefs = torch.full((k,), 1e-3)
    out = {}

    def gather_new():
        for i in idx:
            torch.index_select(x, 0, i, out=xb)
    out["gather: x[idx] -> index_select(out=buffer)"] = (per_step_ms(lambda: [x[i] for i in idx], steps, repeats),
                                                          per_step_ms(gather_new, steps, repeats))

    xb.copy_(x[idx[0]])
    yb = y[idx[0]]

    def ce_autograd():
        for _ in range(steps):
            logits = (xb @ w.view(f, k * c)).view(-1, k, c)
            ce = F.cross_entropy(logits.permute(0, 2, 1), yb[:, None].expand(-1, k), reduction="none").mean(0)
            torch.autograd.grad(ce.sum(), w)

    logits = torch.empty(bsz, k * c)
    yi = yb.view(bsz, 1, 1).expand(bsz, k, 1)
    minus_one = torch.full((1, 1, 1), -1.0).expand_as(yi)
    wd = w.detach()

    def ce_closed():
        for _ in range(steps):
            torch.mm(xb, wd.view(f, k * c), out=logits)
            grad = torch.log_softmax(logits.view(bsz, k, c), dim=2).exp_().scatter_add_(2, yi, minus_one).div_(bsz)
            torch.mm(xb.t(), grad.view(bsz, k * c), out=gw.view(f, k * c))
    out["CE + matmul grads: autograd -> closed form"] = (per_step_ms(ce_autograd, steps, repeats), per_step_ms(ce_closed, steps, repeats))

    def pen_autograd():
        for _ in range(steps):
            torch.autograd.grad(_penalty(w, ["group"] * k, coefs), w)

    def pen_closed():
        for _ in range(steps):
            _add_penalty_grad_(gw, wd, cfgs, 1)
    out["group-lasso grad: autograd -> closed form"] = (per_step_ms(pen_autograd, steps, repeats), per_step_ms(pen_closed, steps, repeats))

    p, g = torch.randn(f, k, c) * 0.01, torch.randn(f, k, c) * 1e-3
    m, v = torch.zeros_like(p), torch.zeros_like(p)
    lr = torch.full((1, k, 1), 1e-3)

    def adam_old():  # as probe.py did at the base revision
        for t in range(steps):
            m.mul_(0.9).add_(g, alpha=0.1)
            v.mul_(0.999).addcmul_(g, g, value=0.001)
            mhat, vhat = m / (1 - 0.9 ** (t + 1)), v / (1 - 0.999 ** (t + 1))
            p.sub_(lr * mhat / (vhat.sqrt() + ADAM_EPS))

    upd = torch.zeros_like(p)
    upd.grad = g
    opt = torch.optim.Adam([upd], lr=1.0, eps=ADAM_EPS, fused=True)

    def adam_fused():
        for _ in range(steps):
            upd.zero_()
            opt.step()
            for i in range(k):
                p[:, i].add_(upd[:, i], alpha=1e-3)
    out["Adam: hand-written -> fused (unit-lr update + per-head lr)"] = (per_step_ms(adam_old, steps, repeats),
                                                                         per_step_ms(adam_fused, steps, repeats))

    xh, wh, gh = xb.bfloat16(), wd.view(f, k * c).bfloat16(), torch.randn(bsz, k * c).bfloat16()
    gl = gh.float()

    def mm32():
        for _ in range(steps):
            torch.mm(xb, wd.view(f, k * c), out=logits)
            torch.mm(xb.t(), gl, out=gw.view(f, k * c))

    def mm16():
        for _ in range(steps):
            xh @ wh
            xh.t() @ gh
    out["both matmuls: float32 -> bf16 (timing only)"] = (per_step_ms(mm32, steps, repeats), per_step_ms(mm16, steps, repeats))
    return {name: {"old_ms": round(a, 2), "new_ms": round(b, 2), "saved_ms": round(a - b, 2)} for name, (a, b) in out.items()}


def train_wide_bf16(x, y, c: int, configs, seed: int = 0) -> list[torch.Tensor]:
    """The probe's wide step with both matmuls in bf16 (x held once in bf16, float32 master
    weights, moments and update): the bf16 lever, kept here to measure it, not in the probe."""
    from head2toe.probe import _adam_unit_step, _add_penalty_grad_, batch_schedule, cosine_lr, glorot_uniform

    n, f = x.shape
    k, steps = len(configs), max(cfg.steps for cfg in configs)
    sched = batch_schedule(n, steps, configs[0].batch_size, seed)
    bsz = sched.shape[1]
    xh = x.bfloat16()
    w = glorot_uniform(f, c, seed)[:, None, :].repeat(1, k, 1)
    b = torch.zeros(k, c)
    xb, gw, gb = torch.empty(bsz, f, dtype=torch.bfloat16), torch.empty_like(w), torch.empty_like(b)
    upd = [torch.zeros_like(w), torch.zeros_like(b)]
    moments = [torch.zeros_like(w), torch.zeros_like(b)], [torch.zeros_like(w), torch.zeros_like(b)]
    adam_t = torch.zeros(())
    for t in range(steps):
        torch.index_select(xh, 0, sched[t], out=xb)
        logits = (xb @ w.view(f, k * c).bfloat16()).float().view(bsz, k, c) + b
        yi = y[sched[t]].view(bsz, 1, 1).expand(bsz, k, 1)
        grad = torch.log_softmax(logits, dim=2).exp_().scatter_add_(2, yi, torch.full_like(yi, -1.0, dtype=torch.float32)).div_(bsz)
        gw.view(f, k * c).copy_(xb.t() @ grad.view(bsz, k * c).bfloat16())
        torch.sum(grad, dim=0, out=gb)
        _add_penalty_grad_(gw, w, configs, 1)
        _adam_unit_step(upd, [gw, gb], moments, adam_t)
        for i, cfg in enumerate(configs):
            if lr := cosine_lr(cfg, t):
                w[:, i].add_(upd[0][:, i], alpha=lr)
                b[i].add_(upd[1][i], alpha=lr)
    return [(w[:, i].clone(), b[i].clone()) for i in range(k)]


def bf16_accuracy(f: int, c: int, configs, repeats: int) -> dict:
    """Test accuracy of float32 vs bf16-matmul heads on a synthetic task of the bench's shape
    (unit-norm rows: a class centre on 100 of the features plus noise), and their step times."""
    from head2toe.probe import train_probes

    gen = torch.Generator().manual_seed(1)
    y = torch.randint(0, c, (1600,), generator=gen)
    centers = torch.zeros(c, f)
    centers[:, torch.randperm(f, generator=gen)[:100]] = torch.randn(c, 100, generator=gen) * 0.6  # 100 features tell
    x = centers[y] + torch.randn(1600, f, generator=gen)
    x /= x.norm(dim=1, keepdim=True)
    tr, te = slice(0, 800), slice(800, 1600)
    out, weights = {}, {}
    fp32 = lambda: train_probes(x[tr], y[tr], c, configs, device="cpu")  # noqa: E731
    bf16 = lambda: train_wide_bf16(x[tr], y[tr], c, configs)  # noqa: E731
    for name, fn in (("float32", fp32), ("bf16_matmuls", bf16)):
        heads = fn()
        cpu = min(timed(fn)[0] for _ in range(repeats))
        accs = []
        weights[name] = [(h.weight, h.bias) if name == "float32" else h for h in heads]
        for w, b in weights[name]:
            accs.append(round(float(((x[te] @ w + b).argmax(1) == y[te]).float().mean()), 4))
        out[name] = {"test_accuracy_per_head": accs, "cpu_s": round(cpu, 3)}
    out["max_weight_diff_over_max_weight"] = [
        round(float((a[0] - b[0]).abs().max() / a[0].abs().max()), 4) for a, b in zip(weights["float32"], weights["bf16_matmuls"])]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=800)
    p.add_argument("--features", type=int, default=28300)
    p.add_argument("--classes", type=int, default=16)
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--base", default="bc8f956", help="git revision whose probe.py is 'before'")
    p.add_argument("--no-levers", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    from head2toe import probe as after

    before = load_base_probe(args.base)
    n, f, c, k, steps = args.n, args.features, args.classes, args.heads, args.steps
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, f, generator=gen) / math.sqrt(f)
    y = torch.randint(0, c, (n,), generator=gen)
    lrs, coefs = (0.1, 0.01), (1e-4, 1e-3)
    group = [after.ProbeConfig(lrs[i % 2], steps, "group", coefs[(i // 2) % 2]) for i in range(k)]
    plain = [after.ProbeConfig(lrs[i % 2], steps) for i in range(k)]
    sched = after.batch_schedule(n, steps, 128, 0)
    xs = [x[:, i::k][:, : f // k] for i in range(k)]  # the stacked path: one (N, F/k) matrix per head
    x_stacked = torch.stack(xs)

    def wide(mod):
        return lambda: mod.train_probes(x, y, c, [mod.ProbeConfig(**vars(cfg)) for cfg in group], device="cpu")

    def stacked(mod):
        return lambda: mod.train_probes_stacked(xs, y, c, [mod.ProbeConfig(**vars(cfg)) for cfg in plain], device="cpu")

    runs = {
        f"wide group-lasso ({k} heads, one (F, {k}*C) matmul)": (bound_fn(x, sched, k * c, False), wide(before), wide(after)),
        f"stacked, no penalty ({k} matrices of F/{k}, one bmm)": (bound_fn(x_stacked, sched, k * c, True), stacked(before), stacked(after)),
    }
    print(json.dumps({"shape": {"N": n, "F": f, "C": c, "heads": k, "steps": steps, "threads": args.threads, "base": args.base}}))
    for name, fns in runs.items():
        for fn in fns:
            fn()  # warm-up
        times = [[], [], []]
        for _ in range(args.repeats):  # interleaved, so a burst of load hits all three alike
            for i, fn in enumerate(fns):
                times[i].append(timed(fn))
        (bound, old, new), (bound_w, old_w, new_w) = ([min(t[j] for t in ts) for ts in times] for j in (0, 1))
        print(json.dumps({name: {"cpu_s": {"bound": round(bound, 3), "before": round(old, 3), "after": round(new, 3)},
                                 "ratio_before": round(bound / old, 3), "ratio_after": round(bound / new, 3),
                                 "speedup": round(old / new, 2), "goal_ratio": 0.6,
                                 "wall_s": {"bound": round(bound_w, 3), "before": round(old_w, 3), "after": round(new_w, 3)}}}),
              flush=True)
    if not args.no_levers:
        print(json.dumps({"levers_ms_per_step": levers(x, sched, k, c, args.repeats)}), flush=True)
        print(json.dumps({"bf16_lever_accuracy": bf16_accuracy(f, c, group, args.repeats)}), flush=True)


if __name__ == "__main__":
    sys.exit(main())
