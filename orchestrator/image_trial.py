"""The Tune trial for image-level methods (finetune, scratch, head2toe_ft).

These train the backbone, so they read images, not the feature cache (head2toe_ft reads
the cache once, for its selection). They ask for whole GPUs (`resources.image_trial`).
Pre-emption costs at most `checkpoint_every` steps: each checkpoint the trainer writes is
reported to Tune as a `Checkpoint`, and a restarted trial restores it and resumes.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

from ray import tune

from head2toe.cache import open_cache
from head2toe.image_methods.config import TrainConfig
from head2toe.image_methods.run import run_image_method
from head2toe.provider import FeatureProvider
from orchestrator.plan import ImageRun
from orchestrator.record import TrialRecord
from orchestrator.trial import report

RESULT_KEYS = ("n_features_total", "n_features_kept", "train_loss", "wall_time_s", "forward_passes")


def image_record(trial: ImageRun, out: dict) -> TrialRecord:
    spec = trial.spec
    metrics = {k: out[k] for k in RESULT_KEYS}
    metrics["start_step"] = out["start_step"]  # > 0 when the trial resumed from a checkpoint
    if spec.fold is None:
        metrics.update(test_accuracy=out["test_accuracy"], cv_accuracy=trial.cv_accuracy)
    else:
        metrics["val_accuracy"] = out["val_accuracy"]
    record = TrialRecord(spec.key, spec.params(), metrics)
    if out.get("kept") is not None and spec.fold is None:
        record.kept, record.widths = out["kept"], out["widths"]
    return record


def image_trial(trial: ImageRun, cache_uri: str | None, train_config: dict) -> None:
    """One image-level method run, resumable from Tune checkpoints."""
    spec = trial.spec
    bb = spec.backbone
    work = Path(tempfile.mkdtemp(prefix="h2t-ft-"))
    restored = tune.get_checkpoint()
    if restored is not None:
        restored.to_directory(str(work))  # the trainer resumes from the checkpoint file in `work`

    def on_checkpoint(step: int, directory: Path, train_loss: float) -> None:
        tune.report({"step": step, "train_loss": train_loss}, checkpoint=tune.Checkpoint.from_directory(str(directory)))

    provider = None
    if spec.method == "head2toe_ft":
        backbone = bb.create()
        provider = FeatureProvider(backbone, store=open_cache(cache_uri), progress=False)
    start = time.perf_counter()
    out = run_image_method(
        spec.task, bb.name, spec.method, spec.hp, spec.seed, spec.fold, config=TrainConfig(**train_config),
        checkpoint_dir=work, on_checkpoint=on_checkpoint, input_size=bb.image_input_size or bb.input_size, weights=bb.weights,
        checkpoint=bb.checkpoint, provider=provider,
    )
    out["wall_time_s"] = time.perf_counter() - start
    report([image_record(trial, out)])
