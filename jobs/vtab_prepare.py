"""`python -m jobs.vtab_prepare --tasks NAME ... --data-dir DIR`: download and prepare VTAB data.

Runs tfds `download_and_prepare` as ArrayRecord (what `tfds.data_source` reads) for the
datasets behind the chosen tasks; data already prepared as tfrecord is converted in
place. Needs internet (not available on the build machines); resisc45 and
diabetic_retinopathy_detection need their archives downloaded by hand into
--manual-dir first (docs/vtab.md). `--dry-run` only reports what is there.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from head2toe.registry import check_choice
from head2toe.tasks.vtab import SPECS, Dataset, VtabTask, data_dir, find_prepared, set_data_dir
from jobs.common import add_data_args


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tasks", nargs="+", required=True, metavar="NAME",
                   help=f"VTAB task names (comma or space separated) or 'all': {', '.join(SPECS)}")
    add_data_args(p)
    p.add_argument("--manual-dir", default=None,
                   help="folder with manually downloaded archives (resisc45, diabetic_retinopathy_detection); default DATA_DIR/downloads/manual")
    p.add_argument("--dry-run", action="store_true", help="report what is prepared, change nothing")


def chosen_tasks(values: list[str]) -> list[str]:
    names = [n for v in values for n in v.split(",") if n]
    if names == ["all"]:
        return list(SPECS)
    for n in names:
        check_choice("VTAB task", n, SPECS, " (or all)")
    return list(dict.fromkeys(names))


def state(task: VtabTask) -> str:
    """'ready', 'tfrecord' (prepared, but not readable by tfds.data_source) or 'missing'."""
    if task.prepared is None:
        return "missing"
    return "ready" if task.available() else "tfrecord"


def prepare(ds: Dataset, where: Path, manual_dir: str | None) -> None:
    import tensorflow_datasets as tfds

    builder = tfds.builder(f"{ds.path}:{ds.version}", data_dir=str(where), file_format="array_record")
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))


def convert(root: Path) -> None:
    from tensorflow_datasets.scripts.cli import convert_format_utils

    convert_format_utils.convert_dataset(out_dir=None, out_file_format="array_record", dataset_version_dir=str(root))


def main(args: argparse.Namespace) -> int:
    if args.data_dir:
        set_data_dir(args.data_dir)
    where = data_dir()
    tasks = [VtabTask(SPECS[n], where) for n in chosen_tasks(args.tasks)]
    by_dataset: dict[str, list[VtabTask]] = {}
    for t in tasks:
        by_dataset.setdefault(t.spec.dataset.path, []).append(t)
    for path, group in by_dataset.items():
        first, ds = group[0], group[0].spec.dataset
        now = state(first)
        names = ", ".join(t.name for t in group)
        note = f"  [{ds.note}]" if ds.note else ""
        print(f"{path}:{ds.version} ({names}): {now}{note}", flush=True)
        if args.dry_run or now == "ready":
            continue
        if now == "tfrecord":
            convert(first.prepared.root)
        else:
            prepare(ds, where, args.manual_dir)
        fresh = VtabTask(first.spec, where)
        fresh.require_data()
        print(f"{path}: ready at {find_prepared(ds, where).root}", flush=True)
    return 0


if __name__ == "__main__":
    import sys

    from jobs._entry import standalone

    sys.exit(standalone(configure, main, "python -m jobs.vtab_prepare"))
