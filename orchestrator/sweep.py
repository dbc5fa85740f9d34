"""The sweep driver: features once, CV trials, best-config selection, final trials.

    extraction (one forward pass per image, cached)  ->  features into the object store
    -> CV trials on Ray Tune  ->  choose best hp per task x backbone x method (MLflow is
    the source of truth, so a resumed sweep sees earlier results)  ->  final trials on test
    -> summary table.

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


# Trial rows are nested (per-hp metrics, kept indices): Tune's JSON logger keeps them, the
# TensorBoard logger cannot, so the automatic loggers are replaced by the JSON one.
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # the classic CLI reporter prints a trial table
os.environ.setdefault("RAY_DEDUP_LOGS", "1")

import pandas as pd  # noqa: E402
import ray  # noqa: E402
from ray import tune  # noqa: E402
from ray.tune.logger import JsonLoggerCallback  # noqa: E402

from head2toe.allocator import allocator_env  # noqa: E402
from head2toe.protocol import choose_best  # noqa: E402
from head2toe.tasks import get_task  # noqa: E402
from orchestrator.config import SweepConfig  # noqa: E402
from orchestrator.extraction import extract_for_sweep  # noqa: E402
from orchestrator.features import backbone_id, share_features  # noqa: E402
from orchestrator.plan import TrialSpec, cv_specs, final_specs, image_cv_specs  # noqa: E402
from orchestrator.tracking import Tracker  # noqa: E402
from orchestrator.image_trial import image_trial  # noqa: E402
from orchestrator.trial import feature_trial  # noqa: E402
from orchestrator.tune_logging import MlflowTrialLogger  # noqa: E402


@dataclass
class SweepResult:
    sweep_id: str
    tracking_uri: str
    experiment: str
    out_dir: Path
    summary: pd.DataFrame
    counts: dict = field(default_factory=dict)


def init_ray(address: str | None) -> None:
    """Attach to a cluster when there is one (address, $RAY_ADDRESS), else start a local one.
    Workers inherit the fastest CPU allocator."""
    if ray.is_initialized():
        return
    env = dict(allocator_env())
    if os.environ.get("TFDS_DATA_DIR"):
        env["TFDS_DATA_DIR"] = os.environ["TFDS_DATA_DIR"]  # where workers find prepared VTAB data
    ray.init(address=address, runtime_env={"env_vars": env}, log_to_driver=True, configure_logging=False)


def default_tracking_uri(out_dir: Path) -> str:
    return f"sqlite:///{(out_dir / 'mlflow.db').resolve()}"


def _run_stage(cfg: SweepConfig, specs: list[TrialSpec], tracker: Tracker, sweep_id: str, stage_run: str,
               refs: dict, out_dir: Path, extra: dict[str, dict]) -> dict:
    """One Tune run over `specs`; the driver-side callback writes MLflow."""
    if not specs:
        return {"trials": 0, "errors": 0}
    num_classes = {t: get_task(t).num_classes for t in {s.task for s in specs}}
    groups = {t: get_task(t).group for t in num_classes}
    trials = [
        {"spec": s, "backbone_id": backbone_id(s.backbone), "num_classes": num_classes[s.task], **extra.get(s.name(), {})}
        for s in specs
    ]
    logger = MlflowTrialLogger(tracker, sweep_id, stage_run, groups, trials)
    resources = [(cfg.resources.trial if t["spec"].hps else cfg.resources.image_trial).as_tune() for t in trials]
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, refs=refs, trials=trials, cache_uri=cfg.cache, train_config=cfg.image_training),
        lambda config: resources[config["trial"]],
    )
    reporter = tune.CLIReporter(metric_columns={"accuracy": "acc"}, parameter_columns=[], max_report_frequency=30,
                                print_intermediate_tables=False)
    tuner = tune.Tuner(
        trainable,
        param_space={"trial": tune.grid_search(list(range(len(trials))))},
        tune_config=tune.TuneConfig(
            reuse_actors=True, max_concurrent_trials=cfg.max_concurrent_trials,
            trial_name_creator=lambda t: trials[t.config["trial"]]["spec"].name(),
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
    return {"trials": len(specs), "errors": len(errors)}


def run_trial(config: dict, refs: dict, trials: list[dict], cache_uri: str | None, train_config: dict) -> None:
    """Tune trainable: probes on shared features, or an image-level method on images."""
    if trials[config["trial"]]["spec"].hps:
        feature_trial(config, refs, trials)
    else:
        image_trial(config, trials, cache_uri, train_config)


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


def summary_table(tracker: Tracker, sweep_id: str) -> pd.DataFrame:
    """Test accuracy (%) mean and std over seeds: one row per task x backbone, methods as columns."""
    rows = []
    for run in tracker.trial_runs(sweep_id, stage="final", status="FINISHED"):
        p = run.data.params
        rows.append({"task": p["task"], "backbone": p["backbone"], "method": p["method"], "seed": int(p["seed"]),
                     "test_accuracy": 100 * run.data.metrics["test_accuracy"]})
    if not rows:
        return pd.DataFrame()
    df = pd.DataFrame(rows).drop_duplicates(["task", "backbone", "method", "seed"])
    agg = df.groupby(["task", "backbone", "method"])["test_accuracy"].agg(["mean", "std", "count"]).reset_index()
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
        extraction = extract_for_sweep(cfg)  # Ray tasks (GPU when the cluster has them) fill the cache
        refs, driver_forwards = share_features(cfg, need_test=True)  # read back from the cache, into the object store
        forwards = extraction.forward_passes + driver_forwards
        tracker.client.log_metric(stage, "forward_passes", forwards)
        tracker.end(stage)
        counts["forward_passes"] = forwards
        stage = tracker.stage_run(sweep_id, parent, "cv")
        counts["cv"] = _run_stage(cfg, todo_cv, tracker, sweep_id, stage, refs, out_dir, {})
        tracker.end(stage)
        best = {k: choose_best(rows) for k, rows in cv_rows(tracker, sweep_id).items()}
        finals = final_specs(cfg, best)
        extra = {s.name(): {"cv_accuracy": best[(s.task, s.backbone.name, s.method)]["mean_accuracy"]} for s in finals}
        todo_final = [s for s in (x.without(finished) for x in finals) if s is not None]
        stage = tracker.stage_run(sweep_id, parent, "final")
        counts["final"] = _run_stage(cfg, todo_final, tracker, sweep_id, stage, refs, out_dir, extra)
        tracker.end(stage)
        stage = ""
        failed = counts["cv"]["errors"] + counts["final"]["errors"]
        tracker.end(parent, "FAILED" if failed else "FINISHED")
    except BaseException:
        for run_id in filter(None, (stage, parent)):
            tracker.end(run_id, "FAILED")
        raise
    return SweepResult(sweep_id, tracking_uri, cfg.experiment_name, out_dir, summary_table(tracker, sweep_id), counts)
