"""The Tune trials of feature methods: CV trials (one fold, a batch of hps) and the final
trial of a (task, backbone) (every final run of it, scored in one pass over the test rows).

Runs in a Ray worker. A trial reads its features itself, from the shared cache (one copy
per node: orchestrator.node_cache), never through the driver; nothing here writes to
MLflow: rows go back to the driver, which logs.

Memory of a CV trial: its train entry's layers once as a float32 unit-normalised matrix
(2x their cached float16 bytes; folds index its rows), the memory-mapped float16 blocks
(page cache, shared by the node's trials), heads and Adam state. The final trial holds one
target size's train matrix at a time, then only heads; test rows stream (a cached entry
chunk by chunk, or a backbone batch at a time with `test_features: stream`).

Out of memory in a trial (CUDA OOM, or a RuntimeError saying "out of memory") becomes a
`TrialOutOfMemory` naming the trial's config and feature count: that trial fails (Tune
retries it per FailureConfig, its MLflow runs end FAILED) and the sweep goes on.
Fault injection for tests: `H2T_SIMULATE_OOM=<method>` (or `*`) in a worker's environment
makes that method's trials raise `torch.cuda.OutOfMemoryError` where the probe would train,
since a monkeypatch cannot reach Ray worker processes. Unset in normal use.
"""
from __future__ import annotations

import os
import time
from collections import defaultdict
from typing import Iterator

import numpy as np
import ray
import torch
from ray import tune

from head2toe.features import LayerFeatures, NormalizedFeatures, layer_columns
from head2toe.methods import METHODS, EvalResult, FittedHead
from head2toe.protocol import cv_folds
from orchestrator.features import iter_entry, layers_read, load_train, release_train
from orchestrator.plan import FeatureTrial, FinalGroup, FoldTrial
from orchestrator.record import TrialRecord, kf_suffix

SCORE_BYTES = 64 << 20  # float32 bytes of one scoring sub-chunk of test rows
SCORE_ROWS = 128  # validation rows scored at a time


def use_assigned_cpus() -> None:
    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1)
    torch.set_num_threads(max(1, int(cpus)))


SIMULATE_OOM = "H2T_SIMULATE_OOM"


class TrialOutOfMemory(RuntimeError):
    """A trial's probes did not fit in memory; the message says which config and how big."""


def _is_oom(e: BaseException) -> bool:
    return isinstance(e, torch.cuda.OutOfMemoryError) or (isinstance(e, RuntimeError) and "out of memory" in str(e).lower())


def fit_or_explain_oom(spec: FeatureTrial, train: NormalizedFeatures, num_classes: int,
                       rows: np.ndarray | None = None) -> list[FittedHead]:
    """`METHODS[spec.method].fit`, with an out-of-memory error turned into one clear line."""
    method = METHODS[spec.method]
    try:
        if os.environ.get(SIMULATE_OOM) in (spec.method, "*"):
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory (simulated by {SIMULATE_OOM}={os.environ[SIMULATE_OOM]})")
        return method.fit(train, list(spec.hps), num_classes, seed=spec.seed, rows=rows)
    except (torch.cuda.OutOfMemoryError, RuntimeError) as e:
        if not _is_oom(e):
            raise
        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # a reused actor starts its next trial with the memory back
        n_features = sum(train.widths[n] for n in method.input_layers(train.layer_names))
        hps = "; ".join(" ".join(f"{k}={v}" for k, v in spec.hp_params(hp).items()) for hp in spec.hps)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        n_rows = len(train) if rows is None else len(rows)
        raise TrialOutOfMemory(
            f"out of memory in trial {spec.name()}: task={spec.task} backbone={spec.backbone.name} method={spec.method} "
            f"hps=[{hps}] n_features={n_features} rows={n_rows} heads={len(spec.hps)} ({first}); "
            "use fewer or smaller target sizes, batch_hparams: false, or more GPU memory per trial (resources.trial.gpu)"
        ) from None


def records_for(spec: FeatureTrial, results: list[EvalResult], wall_s: float, cv_accuracy: float | None, cache_key: str,
                forward_passes: int = 0) -> list[TrialRecord]:
    """One record per hp: its trial key, params, metrics and (final trials) kept indices."""
    records = []
    per_hp = wall_s / max(1, len(spec.hps))
    for hp in spec.hps:
        mine = [r for r in results if r.hp == hp]
        metrics: dict[str, float | None] = {"n_features_total": mine[0].n_features_total, "wall_time_s": per_hp,
                                            "forward_passes": forward_passes}
        record = TrialRecord(spec.key_for(hp), spec.hp_params(hp), metrics, cache_key)
        if spec.stage == "cv":
            metrics["val_accuracy"] = max(r.accuracy for r in mine)
            metrics["train_loss"] = min(r.train_loss for r in mine)
            if METHODS[spec.method].needs_keep_fractions:
                for r in mine:
                    metrics[f"val_accuracy/{kf_suffix(r.keep_fraction)}"] = r.accuracy
                    metrics[f"n_features_kept/{kf_suffix(r.keep_fraction)}"] = r.n_features_kept
        else:
            (r,) = mine
            metrics.update(test_accuracy=r.accuracy, cv_accuracy=cv_accuracy, n_features_kept=r.n_features_kept, train_loss=r.train_loss)
            if r.kept:
                record.kept = {k: v.tolist() for k, v in r.kept.items()}
                record.widths = {k: int(w) for k, w in r.widths.items()}
        records.append(record)
    return records


def report(records: list[TrialRecord]) -> None:
    """Hand a trial's records to the driver (as plain rows inside Tune's result)."""
    tune.report({"rows": [r.as_row() for r in records], "accuracy": max(r.accuracy for r in records)})


def feature_trial(trial: FoldTrial, cache_uri: str | None) -> None:
    """A CV trial: one fold of the CV split, a batch of hps."""
    spec = trial.spec
    method = METHODS[spec.method]
    start = time.perf_counter()
    train = load_train(cache_uri, trial.key, layers_read([spec.method]), trial.num_classes)
    tr_idx, va_idx = cv_folds(len(train))[spec.fold]  # the fold indexes rows of the one float32 matrix
    heads = fit_or_explain_oom(spec, train, trial.num_classes, rows=tr_idx)
    correct = np.zeros(len(heads), dtype=np.int64)
    for a in range(0, len(va_idx), SCORE_ROWS):  # validation rows in pieces: no copy of the fold
        part = va_idx[a:a + SCORE_ROWS]
        correct += method.score(heads, train, method.matrix(train, part), rows=part)
    results = [h.result(int(c), len(va_idx)) for h, c in zip(heads, correct)]
    report(records_for(spec, results, time.perf_counter() - start, None, trial.key))


def final_trial(trial: FinalGroup, cache_uri: str | None) -> None:
    """The final stage of one (task, backbone): every final run (method x seed x target
    size) is fitted on the train split, then all heads are scored in one pass over the test
    rows, counting correct predictions."""
    specs = trial.specs
    nc = trial.num_classes
    start = time.perf_counter()
    by_size: dict[int, list[FeatureTrial]] = defaultdict(list)
    for s in specs:
        by_size[s.target_size].append(s)
    layers = {t: layers_read([s.method for s in group]) for t, group in by_size.items()}
    heads: dict[str, list[FittedHead]] = {}
    for t, group in sorted(by_size.items()):
        train = load_train(cache_uri, trial.keys[f"train/{t}"], layers[t], nc)  # one matrix per size, shared by its methods
        for s in group:
            heads[s.name()] = fit_or_explain_oom(s, train, nc)[:1]
        del train
    release_train()
    correct = {s.name(): 0 for s in specs}
    seen = {t: 0 for t in by_size}
    for t, chunk in _test_chunks(trial, cache_uri, layers):
        seen[t] += len(chunk)
        x_all = chunk.matrix() if any(not METHODS[s.method].needs_keep_fractions for s in by_size[t]) else None
        for s in by_size[t]:
            method = METHODS[s.method]
            x = None if x_all is None else layer_columns(x_all, chunk.widths, method.input_layers(chunk.layer_names))
            correct[s.name()] += method.score(heads[s.name()], chunk, x)[0]
    wall = time.perf_counter() - start
    forwards = max(seen.values()) if trial.test_features == "stream" else 0  # test images this trial forwarded
    records = []
    for s in specs:
        (head,) = heads[s.name()]
        result = head.result(correct[s.name()], seen[s.target_size])
        records += records_for(s, [result], wall / len(specs), trial.cv_accuracy[s.name()], trial.keys.get(f"test/{s.target_size}", ""),
                               forwards)
    report(records)


def _test_chunks(trial: FinalGroup, cache_uri: str | None, layers: dict[int, list[str] | None]) -> Iterator[tuple[int, LayerFeatures]]:
    """(target size, chunk of test rows) in bounded pieces: each cached test entry streamed in
    order, or (`test_features: stream`) one backbone pass over the test images with every
    target size pooled per batch. Chunks are cut so one chunk's float32 matrix stays small."""
    nc = trial.num_classes
    if trial.test_features == "stream":
        for t, batch in _stream_test(trial, layers):
            yield t, batch
        return
    for t in sorted(layers):
        for chunk in iter_entry(cache_uri, trial.keys[f"test/{t}"], layers[t], nc):
            step = max(1, SCORE_BYTES // (4 * max(1, chunk.n_features)))
            for a in range(0, len(chunk), step):
                yield t, chunk.rows(slice(a, a + step))


def _stream_test(trial: FinalGroup, layers: dict[int, list[str] | None]) -> Iterator[tuple[int, LayerFeatures]]:
    from head2toe.tasks import get_task
    from orchestrator.features import stream_features

    spec = trial.specs[0]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    for batch in stream_features(spec.backbone, get_task(spec.task).load("test"), layers, device):  # a composite: each member
        for t, feats in batch.items():
            feats.meta.update(task=spec.task, split="test", target_size=t)  # named by a failed check
            feats.check_finite()
            feats.check_labels(trial.num_classes)
            yield t, feats
