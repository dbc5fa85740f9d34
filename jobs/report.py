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


def main(args: argparse.Namespace) -> int:
    from analysis import NoRunsError, write_report

    uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI
    try:
        page = write_report(uri, args.experiment, args.out)
    except NoRunsError as e:
        raise H2TError(str(e)) from None
    print(f"report: {page}")
    print(f"        {page.with_name('report.md')} (CSVs in {page.parent / 'csv'}, figures in {page.parent / 'figures'})")
    return 0


if __name__ == "__main__":
    import sys

    from jobs._entry import standalone

    sys.exit(standalone(configure, main, "python -m jobs.report"))
