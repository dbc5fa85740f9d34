"""`h2t plan CONFIG.yaml [--json]` / `python -m jobs.plan CONFIG.yaml`: a dry run of a sweep.

Prints candidate features per backbone and target size, trials per stage, backbone forward
passes, cache bytes per split and storage mode, the planned peak memory of the driver, an
extraction worker and the largest probe trial, and GPU-hours with the assumptions behind them.
No Ray, no data, no weights, no network (random-init models give the layer shapes). Exits 2
with one line on stderr when a trial plans more memory than it asks for (the report still prints).
"""
from __future__ import annotations

import argparse
import json
from collections import Counter

from head2toe.cache import human_bytes
from orchestrator.capacity import CapacityPlan, check_fits, plan_capacity
from orchestrator.config import load_config


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="sweep YAML (see configs/)")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")


def _table(rows: list[list], header: list[str], left: int = 1) -> str:
    """Aligned plain text: the first `left` columns left-justified, the rest right-justified."""
    cells = [header, *[[str(c) for c in r] for r in rows]]
    width = [max(len(r[i]) for r in cells) for i in range(len(header))]

    def fmt(r: list[str]) -> str:
        return "  ".join(c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(r, width))).rstrip()

    return "\n".join(["  " + fmt(cells[0]), "  " + "  ".join("-" * w for w in width), *("  " + fmt(r) for r in cells[1:])])


def render(plan: CapacityPlan) -> str:
    out = [f"Plan of sweep {plan.config!r} (float16 cache; layer shapes from random-init models)"]
    out += ["", "Candidate features per image (all tapped layers; linear reads pre_logits only)"]
    out.append(_table([[b.name, b.input_size, b.layers, f"{b.params / 1e6:.1f}M", t, f"{b.widths[t]:,}", f"{b.pre_logits[t]:,}"]
                       for b in plan.backbones for t in plan.target_sizes],
                      ["backbone", "input", "layers", "params", "target size", "features", "pre_logits"]))
    cv, fin = plan.trials["cv"], plan.trials["final"]
    out += ["", "Trials per stage", _table([
        ["CV", cv["feature_trials"], cv["feature_runs"], cv["image_trials"]],
        ["final", fin["feature_trials"], fin["feature_runs"], fin["image_trials"]]],
        ["stage", "probe trials", "probe runs (hps)", "image trials"])]
    out += ["", "Backbone forward passes", _table([[k, f"{v:,}"] for k, v in plan.forward_passes.items()], ["what", "images"])]
    by = {}
    for r in plan.storage:
        row = by.setdefault((r["backbone"], r["target_size"]), {"train": 0, "test": 0, "rows": {"train": 0, "test": 0}})
        row[r["split"]] += r["bytes"]
        row["rows"][r["split"]] += r["rows"]
    selected = f" (this config: test_features: {plan.test_features})" if plan.test_features else ""
    out += ["", f"Feature cache, all tasks{selected}", _table(
        [[bb, t, f"{v['rows']['train']:,}", human_bytes(v["train"]), f"{v['rows']['test']:,}", human_bytes(v["test"]),
          human_bytes(v["train"] + v["test"]), human_bytes(v["train"])] for (bb, t), v in by.items()]
        + [["all", "", "", "", "", "", human_bytes(plan.storage_bytes("cache")), human_bytes(plan.storage_bytes("stream"))]],
        ["backbone", "target size", "train rows", "train", "test rows", "test", "test_features: cache", "test_features: stream"])]
    if plan.storage:
        big = max(plan.storage, key=lambda r: r["bytes"])
        out.append(f"  largest split: {big['task']} {big['split']} through {big['backbone']} at T={big['target_size']}: "
                   f"{big['rows']:,} rows x {big['features']:,} features = {human_bytes(big['bytes'])}")
    out += ["", "Planned peak memory per process (the bytes each one holds at its peak)"]
    rows = []
    for kind, m in plan.memory.items():
        for where, parts in m.items():
            grant = plan.granted.get(kind, {}).get(where)
            rows.append([kind, "GPU" if where == "gpu" else "host", human_bytes(sum(parts.values())),
                         "-" if kind not in plan.granted else human_bytes(grant) if grant else "not asked"])
            rows += [[f"  {k}", "", human_bytes(v), ""] for k, v in parts.items()]
    out.append(_table(rows, ["process / part", "where", "peak", "granted"], left=2))
    out.append("  granted: the GPU share x resources.gpu_memory, or resources.<kind>.memory (Ray's memory resource)")
    if plan.largest_probe is not None:
        p = plan.largest_probe
        out.append(f"  largest probe trial: {p.label()}: N={p.rows:,} rows x F={p.features:,} features, C={p.classes} classes, K={p.heads}")
    out += ["", "GPU-hours at the assumed throughput", _table([[k, f"{v:,.2f}"] for k, v in plan.gpu_hours.items()], ["stage", "GPU-hours"])]
    a = plan.assumptions
    out += ["  assumptions (orchestrator.capacity.Assumptions, sources in its docstring):",
            f"    extraction img/s per GPU: {', '.join(f'{k} {v:g}' for k, v in a.extract_img_per_s)}, other {a.extract_img_per_s_other:g}",
            f"    image-method training img/s per GPU: {', '.join(f'{k} {v:g}' for k, v in a.train_img_per_s)}, other {a.train_img_per_s_other:g}",
            f"    probes: 6*B*F*C*K FLOPs per step (B=128) at {a.probe_tflops:g} TFLOP/s sustained; {a.head_copies:g} float32 copies of the heads at a step's peak",
            f"    driver {human_bytes(a.driver_base_bytes)} and Ray worker {human_bytes(a.worker_base_bytes)} baseline RSS; "
            f"bf16 autocast saves {a.bf16_saved_ratio:g}x the float32 activations"]
    if plan.refused:
        kinds = Counter(r.what.split(" task=")[0].split(" backbone=")[0] for r in plan.refused)
        out += ["", f"REFUSED: {len(plan.refused)} process(es) plan more memory than they ask for "
                f"({', '.join(f'{n} {k}' for k, n in kinds.items())}); the worst:", f"  {plan.refused[0].line()}"]
    else:
        out += ["", "Every trial and extraction task fits the memory it asks for."]
    return "\n".join(out)


def main(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    plan = plan_capacity(cfg)
    print(json.dumps(plan.as_dict()) if args.json else render(plan), flush=True)
    check_fits(cfg, plan)
    return 0


if __name__ == "__main__":
    import sys

    from jobs._entry import standalone

    sys.exit(standalone(configure, main, "python -m jobs.plan"))
