"""The Tune trainable every sweep trial runs: the one module a Ray worker imports for it.

It imports what trials need (torch, the probes, the cache reader) and nothing the driver
alone needs (MLflow, pandas beyond what Ray Tune loads): with reused actors a worker pays
these imports once per stage, and MLflow alone costs seconds.
"""
from __future__ import annotations

from orchestrator.image_trial import image_trial
from orchestrator.plan import FinalGroup, FoldTrial, ImageRun, TuneTrial
from orchestrator.trial import feature_trial, final_trial, use_assigned_cpus


def run_trial(config: dict, trials: list[TuneTrial], cache_uri: str | None, train_config: dict) -> None:
    """Tune function trainable: `config["trial"]` indexes `trials`; probes on cached features
    (a CV fold, or a task x backbone's final runs) or an image-level method on images."""
    use_assigned_cpus()
    trial = trials[config["trial"]]
    if isinstance(trial, FoldTrial):
        feature_trial(trial, cache_uri)
    elif isinstance(trial, FinalGroup):
        final_trial(trial, cache_uri)
    elif isinstance(trial, ImageRun):
        image_trial(trial, cache_uri, train_config)
    else:
        raise TypeError(f"not a sweep trial: {trial!r}")
