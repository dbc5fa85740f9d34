"""`h2t tasks`: the task registry."""
from __future__ import annotations

import argparse
import json

from head2toe.tasks import get_task, task_names
from head2toe.tasks.vtab import data_dir, set_data_dir
from jobs.common import add_data_args


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="one JSON list on stdout")
    add_data_args(p)


def main(args: argparse.Namespace) -> int:
    if args.data_dir:
        set_data_dir(args.data_dir)
    rows = [get_task(n).describe() for n in task_names()]
    if args.json:
        print(json.dumps(rows))
        return 0
    print(f"{'task':<34} {'group':<12} {'source':<8} {'classes':>7} {'train':>6} {'test':>6}  local")
    for r in rows:
        s = r["splits"]
        print(f"{r['name']:<34} {r['group']:<12} {r['source']:<8} {r['num_classes']:>7} {s.get('train', 0):>6} {s.get('test', 0):>6}  {'yes' if r['available'] else 'no'}")
    print("\nAlso: imagefolder:PATH  (PATH/train/<class>/*, PATH/test/<class>/*)")
    if any(r["source"] == "tfds" and not r["available"] for r in rows):
        print(f"VTAB data is read from {data_dir()} (--data-dir); prepare it with: python -m jobs.vtab_prepare --tasks NAME ... --data-dir DIR")
    return 0


if __name__ == "__main__":
    import sys

    from jobs._entry import standalone

    sys.exit(standalone(configure, main, "python -m jobs.tasks"))
