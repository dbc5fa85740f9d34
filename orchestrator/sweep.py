"""The sweep driver: features once, CV trials, best-config selection, final trials.

    extraction (one forward pass per image, cached)  ->  train entries validated where they
    are read (Ray tasks)  ->  CV trials on Ray Tune, each reading its entry from the cache
    ->  choose best hp per task x backbone x method (MLflow is the source of truth, so a
    resumed sweep sees earlier results)  ->  one final trial per task x backbone: every final
    run fitted, then scored in one pass over the test rows  ->  summary table.

The driver plans and logs but never reads features: it hands trials cache keys.

Resume: every hp of every trial has a deterministic key; finished keys are skipped, runs a
killed driver left RUNNING are marked FAILED and run again.
"""
from __future__ import annotations

import os
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import ray
from ray import tune
from ray.tune.logger import JsonLoggerCallback

from head2toe.allocator import allocator_env
from head2toe.errors import H2TError
from head2toe.protocol import choose_best
from head2toe.tasks import get_task
from orchestrator.config import SweepConfig
from orchestrator.extraction import extract_for_sweep
from orchestrator.features import backbone_id, check_entry, sweep_keys, sweep_splits
from orchestrator.plan import (FeatureTrial, FinalGroup, FoldTrial, ImageRun, TrialSpec, TuneTrial, cv_specs, final_specs,
                               image_cv_specs, single_candidates)
from orchestrator.record import TrialRecord
from orchestrator.tracking import Tracker
from orchestrator.trainable import run_trial
from orchestrator.tune_logging import MlflowTrialLogger

# Read by Tune when a Tuner runs (not at import), set by init_ray unless the user set them:
TUNE_ENV = {
    # Trial rows are nested (per-hp metrics, kept indices): Tune's JSON logger keeps them, the
    # TensorBoard logger cannot, so the automatic loggers are replaced by the JSON one.
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
    "RAY_AIR_NEW_OUTPUT": "0",  # the classic CLI reporter prints a trial table
}


@dataclass
class SweepResult:
    sweep_id: str
    tracking_uri: str
    experiment: str
    out_dir: Path
    summary: pd.DataFrame
    counts: dict = field(default_factory=dict)
    # mean test accuracy (%) over seeds: {(task, backbone, method): mean}
    means: dict[tuple[str, str, str], float] = field(default_factory=dict)
    experiment_id: str = ""


def init_ray(address: str | None) -> None:
    """Attach to a cluster when there is one (address, $RAY_ADDRESS), else start a local one.
    Workers inherit the fastest CPU allocator. Sets the driver's Tune settings (`TUNE_ENV`)."""
    for k, v in TUNE_ENV.items():
        os.environ.setdefault(k, v)
    if ray.is_initialized():
        return
    env = dict(allocator_env())
    if os.environ.get("TFDS_DATA_DIR"):
        env["TFDS_DATA_DIR"] = os.environ["TFDS_DATA_DIR"]  # where workers find prepared VTAB data
    ray.init(address=address, runtime_env={"env_vars": env}, log_to_driver=True, configure_logging=False)


def default_tracking_uri(out_dir: Path) -> str:
    return f"sqlite:///{(out_dir / 'mlflow.db').resolve()}"


def _trials(cfg: SweepConfig, specs: list[TrialSpec], keys: dict, extra: dict[str, dict]) -> list[TuneTrial]:
    """Tune trials of a stage: a CV trial per spec; in the final stage one trial per task x
    backbone holding every feature-method final run, and one per image-method final run."""
    num_classes = {t: get_task(t).num_classes for t in {s.task for s in specs}}
    out: list[TuneTrial] = []
    finals: dict[tuple, list[FeatureTrial]] = defaultdict(list)
    for s in specs:
        if not isinstance(s, FeatureTrial):
            out.append(ImageRun(s, num_classes[s.task], extra.get(s.name(), {}).get("cv_accuracy")))
        elif s.stage == "cv":
            key = keys[(s.task, backbone_id(s.backbone), get_task(s.task).cv_split, s.target_size)]
            out.append(FoldTrial(s, key, num_classes[s.task]))
        else:
            finals[(s.task, s.backbone)].append(s)
    for (task, bb), group in finals.items():
        bid, sizes = backbone_id(bb), sorted({s.target_size for s in group})
        entry = {f"{split}/{t}": keys[(task, bid, split, t)] for t in sizes for split in ("train", "test") if (task, bid, split, t) in keys}
        out.append(FinalGroup(tuple(group), entry, num_classes[task], cfg.test_features,
                              {s.name(): extra[s.name()]["cv_accuracy"] for s in group}))
    return out


def _resources(cfg: SweepConfig, trial: TuneTrial) -> dict[str, float]:
    if isinstance(trial, FinalGroup):  # the final trial of a task x backbone
        return cfg.final_resources().as_tune()
    return (cfg.resources.trial if isinstance(trial, FoldTrial) else cfg.resources.image_trial).as_tune()


def _run_stage(cfg: SweepConfig, specs: list[TrialSpec], tracker: Tracker, sweep_id: str, stage_run: str,
               keys: dict, out_dir: Path, extra: dict[str, dict]) -> tuple[dict, int]:
    """One Tune run over `specs`; the driver-side callback writes MLflow. Returns the stage's
    counts and the test images its final trials forwarded (`test_features: stream`)."""
    if not specs:
        return {"trials": 0, "errors": 0}, 0
    groups = {t: get_task(t).group for t in {s.task for s in specs}}
    trials = _trials(cfg, specs, keys, extra)
    logger = MlflowTrialLogger(tracker, sweep_id, stage_run, groups, trials)
    resources = [_resources(cfg, t) for t in trials]
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, trials=trials, cache_uri=cfg.cache, train_config=cfg.image_training),
        lambda config: resources[config["trial"]],
    )
    reporter = tune.CLIReporter(metric_columns={"accuracy": "acc"}, parameter_columns=[], max_report_frequency=30,
                                print_intermediate_tables=False)
    tuner = tune.Tuner(
        trainable,
        param_space={"trial": tune.grid_search(list(range(len(trials))))},
        tune_config=tune.TuneConfig(
            reuse_actors=True, max_concurrent_trials=cfg.max_concurrent_trials,
            trial_name_creator=lambda t: trials[t.config["trial"]].name,
            trial_dirname_creator=lambda t: t.trial_id,
        ),
        run_config=tune.RunConfig(
            name=f"{cfg.name}-{sweep_id}-{specs[0].stage}-{int(time.time())}",
            storage_path=str((out_dir / "tune").resolve()),
            failure_config=tune.FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),  # image trials: resume point, not history
            callbacks=[logger, JsonLoggerCallback()], progress_reporter=reporter, verbose=1,
        ),
    )
    grid = tuner.fit()
    errors = [r for r in grid if r.error is not None]
    for r in errors:
        print(f"h2t: trial failed after {cfg.max_failures} retries: {r.error}", file=sys.stderr)
    streamed = sum(TrialRecord.from_row(r.metrics["rows"][0]).metrics.get("forward_passes", 0) for r in grid
                   if r.error is None and isinstance(trials[r.config["trial"]], FinalGroup) and r.metrics.get("rows"))
    return {"trials": len(trials), "errors": len(errors)}, streamed


def check_train_entries(cfg: SweepConfig, keys: dict) -> None:
    """Every entry a probe will train on, read and validated in Ray tasks (digests, NaN/Inf,
    label range) before any trial starts: a bad file stops the sweep with its one line. On
    remote storage this also makes the node-local copy of the node that ran the check."""
    wanted = [(task, key) for (task, _, split, _), key in keys.items() if split != "test"]
    if not wanted:
        return
    remote = ray.remote(check_entry).options(num_cpus=cfg.resources.trial.cpu)
    pending = [remote.remote(cfg.cache, key, get_task(task).num_classes) for task, key in wanted]
    try:
        ray.get(pending)
    except ray.exceptions.RayTaskError as e:
        if isinstance(e.cause, H2TError):
            raise e.cause from None
        raise

def cv_rows(tracker: Tracker, sweep_id: str) -> dict[tuple[str, str, str], list[dict]]:
    """Validation rows of finished CV trials, grouped by (task, backbone, method)."""
    out: dict[tuple[str, str, str], list[dict]] = defaultdict(list)
    for run in tracker.trial_runs(sweep_id, stage="cv", status="FINISHED"):
        p, m = run.data.params, run.data.metrics
        base = {"lr": float(p["lr"]), "steps": int(p["steps"]), "coef": float(p.get("coef", 0.0)),
                "target_size": int(p["target_size"]) if "target_size" in p else None,
                "fold": int(p["fold"]), "seed": int(p["seed"])}
        fractions = [k.split("kf_", 1)[1] for k in m if k.startswith("val_accuracy/kf_")]
        group = out[(p["task"], p["backbone"], p["method"])]
        if fractions:
            group += [{**base, "keep_fraction": float(f), "accuracy": m[f"val_accuracy/kf_{f}"]} for f in fractions]
        else:  # one accuracy per run (head2toe_ft records its single keep fraction as a param)
            kf = float(p["keep_fraction"]) if "keep_fraction" in p else None
            group.append({**base, "keep_fraction": kf, "accuracy": m["val_accuracy"]})
    return out


def final_accuracy(tracker: Tracker, sweep_id: str) -> pd.DataFrame:
    """Test accuracy (%) of finished final runs: mean, std and count over seeds per task x
    backbone x method (empty when none finished)."""
    rows = []
    for run in tracker.trial_runs(sweep_id, stage="final", status="FINISHED"):
        p = run.data.params
        rows.append({"task": p["task"], "backbone": p["backbone"], "method": p["method"], "seed": int(p["seed"]),
                     "test_accuracy": 100 * run.data.metrics["test_accuracy"]})
    if not rows:
        return pd.DataFrame()
    df = pd.DataFrame(rows).drop_duplicates(["task", "backbone", "method", "seed"])
    return df.groupby(["task", "backbone", "method"])["test_accuracy"].agg(["mean", "std", "count"]).reset_index()


def summary_table(agg: pd.DataFrame) -> pd.DataFrame:
    """`final_accuracy`'s rows as the printed table: mean ± std over seeds, one row per task x
    backbone, methods as columns."""
    if agg.empty:
        return agg
    agg["cell"] = [f"{m:.1f}" + (f" ± {s:.1f}" if c > 1 else "") for m, s, c in zip(agg["mean"], agg["std"].fillna(0), agg["count"])]
    return agg.pivot(index=["task", "backbone"], columns="method", values="cell")


def run_sweep(cfg: SweepConfig, out_dir: Path, resume: bool = False, address: str | None = None,
              config_text: str = "") -> SweepResult:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if cfg.data_dir:
        from head2toe.tasks.vtab import set_data_dir

        set_data_dir(cfg.data_dir)
    tracking_uri = cfg.tracking_uri or default_tracking_uri(out_dir)
    local = tracking_uri.startswith("sqlite:")
    tracker = Tracker(tracking_uri, cfg.experiment_name, (out_dir / "artifacts").resolve().as_uri() if local else None)
    config_hash = cfg.sweep_id()
    earlier = tracker.instances(config_hash)
    sweep_id = earlier[-1] if resume and earlier else f"{config_hash}-{len(earlier) + 1}"
    parent = tracker.sweep_run(sweep_id, config_hash, cfg.name, config_text)
    orphans = tracker.fail_orphans(sweep_id)
    if orphans:
        print(f"h2t: {orphans} trial run(s) left RUNNING by an earlier driver marked FAILED; they run again")
    finished = tracker.finished_keys(sweep_id)
    counts: dict = {"resumed_finished": len(finished)}
    init_ray(address)
    stage = ""
    try:
        todo_cv = [s for s in (x.without(finished) for x in [*cv_specs(cfg), *image_cv_specs(cfg)]) if s is not None]
        stage = tracker.stage_run(sweep_id, parent, "extract")
        splits = sweep_splits(cfg)
        extraction = extract_for_sweep(cfg, splits)  # Ray tasks (GPU when the cluster has them) fill the cache
        keys = sweep_keys(cfg, splits)
        check_train_entries(cfg, keys)
        tracker.client.log_metric(stage, "forward_passes", extraction.forward_passes)
        tracker.end(stage)
        counts["forward_passes"] = extraction.forward_passes
        stage = tracker.stage_run(sweep_id, parent, "cv")
        counts["cv"], _ = _run_stage(cfg, todo_cv, tracker, sweep_id, stage, keys, out_dir, {})
        tracker.end(stage)
        best = {**single_candidates(cfg), **{k: choose_best(rows) for k, rows in cv_rows(tracker, sweep_id).items()}}
        finals = final_specs(cfg, best)
        extra = {s.name(): {"cv_accuracy": best[(s.task, s.backbone.name, s.method)]["mean_accuracy"]} for s in finals}
        todo_final = [s for s in (x.without(finished) for x in finals) if s is not None]
        stage = tracker.stage_run(sweep_id, parent, "final")
        counts["final"], streamed = _run_stage(cfg, todo_final, tracker, sweep_id, stage, keys, out_dir, extra)
        counts["forward_passes"] += streamed  # test images the final trials forwarded
        tracker.end(stage)
        stage = ""
        failed = counts["cv"]["errors"] + counts["final"]["errors"]
        tracker.summarize(sweep_id, parent, counts)  # the sweep run's metrics: mean test accuracy per backbone x method, counts
        tracker.end(parent, "FAILED" if failed else "FINISHED")
    except BaseException:
        for run_id in filter(None, (stage, parent)):
            tracker.end(run_id, "FAILED")
        raise
    agg = final_accuracy(tracker, sweep_id)  # one read of the final runs for the table and the means
    means = {(r.task, r.backbone, r.method): float(r.mean) for r in agg.itertuples()}
    return SweepResult(sweep_id, tracking_uri, cfg.experiment_name, out_dir, summary_table(agg), counts, means,
                       tracker.experiment_id)
