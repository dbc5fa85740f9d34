"""`h2t report`: the analysis of a sweep's MLflow runs as report.html (self-contained),
report.md, CSVs, LaTeX tables and figures."""
from __future__ import annotations

import argparse
import os

from head2toe.errors import H2TError

DEFAULT_URI = "sqlite:///out/demo/mlflow.db"  # where `h2t sweep configs/demo.yaml` / `h2t demo` log


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tracking-uri", default=None,
                   help=f"MLflow tracking URI (default $MLFLOW_TRACKING_URI, else {DEFAULT_URI})")
    p.add_argument("--experiment", default="h2t-demo", help="MLflow experiment of the sweep (default h2t-demo)")
    p.add_argument("--out", default="out/report", help="output folder (default out/report)")
    p.add_argument("--sweep", default=None, metavar="SWEEP_ID",
                   help="also log the report folder as the `report/` artefact of this sweep's run (`latest`: the newest)")


def main(args: argparse.Namespace) -> int:
    from analysis import NoRunsError, write_report
    from analysis.runs import _client, _experiment_id

    uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI
    tracker = sweep_run = None
    try:
        if args.sweep:  # a missing store, experiment or sweep: one line before any work
            from orchestrator.tracking import Tracker

            _experiment_id(_client(uri), args.experiment)
            tracker = Tracker(uri, args.experiment)
            sweep_run = tracker.find_sweep_run(args.sweep)
        page = write_report(uri, args.experiment, args.out)
    except NoRunsError as e:
        raise H2TError(str(e)) from None
    print(f"report: {page}")
    print(f"        {page.with_name('report.md')} (CSVs in {page.parent / 'csv'}, figures in {page.parent / 'figures'})")
    if tracker and sweep_run:
        tracker.log_report(sweep_run, page.parent)
        print(f"        logged as artefact report/ of MLflow run {sweep_run}")
    return 0


if __name__ == "__main__":
    import sys

    from jobs._entry import standalone

    sys.exit(standalone(configure, main, "python -m jobs.report"))
