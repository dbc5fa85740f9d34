"""`h2t sweep CONFIG.yaml` / `ray job submit -- python -m jobs.sweep CONFIG.yaml`.

Validates the config before anything starts, attaches to a Ray cluster when there is one
(else starts a local one), runs extraction, CV and final trials, and prints the table.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from jobs.preflight import check_tracking_uri, open_checked_cache, require_writable_or_cached, write_problem
from orchestrator.config import SweepConfig, load_config
from orchestrator.expected import check_expected, parse_expected


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="sweep YAML (see configs/)")
    p.add_argument("--resume", action="store_true", help="continue the latest run of this config: only unfinished trials run")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default sqlite:///OUT/mlflow.db)")
    p.add_argument("--cache", default=None, help="feature cache URI (default from the config, $H2T_CACHE, ~/.cache/h2t/features)")
    p.add_argument("--address", default=None, help="Ray cluster address (default $RAY_ADDRESS, else a local Ray)")
    p.add_argument("--out", default=None, help="output folder (default out/<config name>)")


def print_result(res) -> None:
    print(f"\nSweep {res.sweep_id}: test accuracy (%), mean ± std over seeds")
    print(res.summary.to_string() if not res.summary.empty else "(no finished final trials)")
    print(f"\nMLflow: experiment {res.experiment!r} at {res.tracking_uri}")
    if res.tracking_uri.startswith("sqlite:"):
        print(f"  open the UI:  mlflow ui --backend-store-uri {res.tracking_uri} --host 127.0.0.1 --port 5000")
    elif res.tracking_uri.startswith(("http://", "https://")):
        from orchestrator.tracking import runs_page

        print(f"  runs page:  {runs_page(res.tracking_uri, res.experiment_id)}")


def print_expected(cfg: SweepConfig, res) -> int:
    """One line per `expected:` rule and backbone (met or MISSED, with the measured value);
    returns how many did not hold. A miss is a finding, not a failure: the exit code stays."""
    outcomes = check_expected(expected_rules(cfg), res.means, [bb.name for bb in cfg.backbones])
    for o in outcomes:
        print(f"h2t: {o.line()}")
    return sum(not o.met for o in outcomes)


def expected_rules(cfg: SweepConfig):
    return parse_expected(cfg.expected, list(cfg.tasks), list(cfg.methods))


def preflight(cfg: SweepConfig) -> None:
    """What the sweep will touch, checked before Ray starts: the `expected:` rules parse, the
    tracking server answers, the feature cache is reachable and either writable or already
    holds every file."""
    expected_rules(cfg)
    check_tracking_uri(cfg.tracking_uri)
    cache = open_checked_cache(cfg.cache)
    if write_problem(cache) is None:
        return
    from orchestrator.features import sweep_keys, sweep_splits

    keys = list(sweep_keys(cfg, sweep_splits(cfg)).values())
    require_writable_or_cached(cache, keys, verify_data=False)  # footers only: the driver reads no feature bytes


def main(args: argparse.Namespace) -> int:
    from orchestrator.capacity import check_fits

    cfg = load_config(args.config, tracking_uri=args.tracking_uri, cache=args.cache)
    check_fits(cfg)  # a trial that cannot fit what it asks for is refused before Ray is even imported
    preflight(cfg)
    from orchestrator.sweep import run_sweep

    out = Path(args.out or Path("out") / cfg.name)
    res = run_sweep(cfg, out, resume=args.resume, address=args.address, config_text=Path(args.config).read_text())
    print_result(res)
    print_expected(cfg, res)
    return 1 if res.counts["cv"]["errors"] or res.counts["final"]["errors"] else 0


if __name__ == "__main__":
    import sys

    from jobs._entry import standalone

    sys.exit(standalone(configure, main, "python -m jobs.sweep"))
