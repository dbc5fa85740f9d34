"""Size of the VTAB-1k feature cache for a backbone at the paper's target sizes, from layer
shapes alone (no data, no weights): 19 tasks x (1000 train + the VTAB test split) rows.

Run: `.venv/bin/python benchmarks/cache_size.py [--backbone resnet50 vit_b16]`; prints Markdown.
"""
from __future__ import annotations

import argparse

from head2toe.backbones import create_backbone
from head2toe.cache import file_bytes, human_bytes, layer_widths
from head2toe.grids import PAPER_TARGET_SIZES
from head2toe.tasks.vtab import SPECS, parse_split


def vtab_rows() -> dict[str, int]:
    """Rows per task: 1000 train + VTAB's test split (from the catalogue split sizes)."""
    out = {}
    for name, spec in SPECS.items():
        test = spec.split_rule(spec.dataset.counts)["test"]
        out[name] = 1000 + sum(stop - start for _, start, stop in parse_split(test, spec.dataset.counts))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--backbone", nargs="+", default=["resnet50", "vit_b16"])
    p.add_argument("--target-size", type=int, nargs="+", default=PAPER_TARGET_SIZES)
    args = p.parse_args()
    rows = vtab_rows()
    n = sum(rows.values())
    print(f"VTAB-1k: {len(rows)} tasks, {n:,} rows (19,000 train + {n - 19000:,} test)\n")
    print("| backbone | taps | target size | features / image | per 1000 images (fp16) | VTAB-1k float16 | VTAB-1k float32 |")
    print("|---|---|---|---|---|---|---|")
    for name in args.backbone:
        bb = create_backbone(name, weights="random")
        totals = {"float16": 0, "float32": 0}
        for t in args.target_size:
            d = sum(layer_widths(bb, t).values())
            size = {dt: sum(file_bytes(r, d, dt) for r in rows.values()) for dt in totals}
            for dt in totals:
                totals[dt] += size[dt]
            print(f"| {name} | {len(bb.layer_names)} | {t} | {d:,} | {human_bytes(file_bytes(1000, d, 'float16'))} "
                  f"| {human_bytes(size['float16'])} | {human_bytes(size['float32'])} |")
        print(f"| {name} | | all {len(args.target_size)} | | | **{human_bytes(totals['float16'])}** | **{human_bytes(totals['float32'])}** |")


if __name__ == "__main__":
    main()
