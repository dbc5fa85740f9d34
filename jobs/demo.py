"""`h2t demo`: the embedded default, offline on a laptop: sweep configs/demo.yaml on local
Ray (resuming whatever an earlier demo finished), then write the report and log it to the
sweep's MLflow run."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from orchestrator.config import load_config

DEMO_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="out/demo", help="output folder: mlflow.db, tune/, report/")
    p.add_argument("--config", default=str(DEMO_CONFIG), help=argparse.SUPPRESS)
    p.add_argument("--cache", default=None, help="feature cache URI (default $H2T_CACHE or ~/.cache/h2t/features)")


def main(args: argparse.Namespace) -> int:
    from jobs.sweep import preflight, print_expected, print_result
    from orchestrator.sweep import run_sweep

    start = time.perf_counter()
    cfg = load_config(args.config, cache=args.cache)
    preflight(cfg)
    out = Path(args.out)
    res = run_sweep(cfg, out, resume=True, config_text=Path(args.config).read_text())
    print_result(res)
    print_expected(cfg, res)
    report = write_report(res.tracking_uri, res.experiment, out / "report")
    if report:
        print(f"Report: {report}")
        log_report(res, report.parent)
    print(f"Demo finished in {time.perf_counter() - start:.0f} s")
    return 1 if res.counts["cv"]["errors"] or res.counts["final"]["errors"] else 0


def write_report(tracking_uri: str, experiment: str, out: Path) -> Path | None:
    try:
        from analysis.report import write_report as _write
    except ImportError:
        return None
    return _write(tracking_uri=tracking_uri, experiment=experiment, out=out)


def log_report(res, folder: Path) -> None:
    """The report as the sweep run's `report/` artefact, and where the UI shows it. A tracking
    server that stays away costs only the artefact: the files are on disk."""
    from orchestrator.tracking import Tracker, TrackingUnavailable, runs_page

    try:
        tracker = Tracker(res.tracking_uri, res.experiment)
        tracker.log_report(tracker.find_sweep_run(res.sweep_id), folder)
    except TrackingUnavailable as e:
        print(f"h2t: report not logged to MLflow ({e}); `h2t report --sweep {res.sweep_id}` logs it later")
        return
    server = res.tracking_uri if res.tracking_uri.startswith("http") else "http://127.0.0.1:5000"
    print(f"MLflow UI (the sweep run holds the report under Artifacts): {runs_page(server, tracker.experiment_id)}")


if __name__ == "__main__":
    import sys

    from jobs._entry import standalone

    sys.exit(standalone(configure, main, "python -m jobs.demo"))
