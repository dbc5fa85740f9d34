"""Composite backbones ("a+b"): the union of the members' layers, each read from that
member's own cache entry under its own key, qualified names, every feature method, and
where the kept features came from. Random-init Lite0 and Lite2 at 32 px on `faces`
(100 train / 100 test images)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from head2toe.backbones import composite_members, create_backbone, split_qualified
from head2toe.cache import FeatureCache
from head2toe.cache.plan import layer_widths
from head2toe.errors import H2TError
from head2toe.methods import METHODS
from head2toe.provider import FeatureProvider, UnionProvider, feature_key
from head2toe.tasks import get_task

L0, L2 = "efficientnet_lite0", "efficientnet_lite2"
PAIR = f"{L0}+{L2}"


@pytest.fixture(scope="module")
def members():
    return [create_backbone(n, weights="random", input_size=32) for n in (L0, L2)]


@pytest.mark.parametrize("name,match", [
    (f"{L0}+{L0}", "bad composite backbone"), (f"{L0}+", "bad composite backbone"), (f"{L0}+ {L2}", "bad composite"),
    (f"{L0}+nope", "unknown backbone 'nope'"),
])
def test_bad_composite_names_are_refused(name, match):
    with pytest.raises(H2TError, match=match):
        composite_members(name)


def test_composite_names_parse_and_have_no_spec_of_their_own():
    assert composite_members(PAIR) == [L0, L2] and composite_members(L0) == [L0]
    assert split_qualified(f"{L0}/blocks.3.0") == (L0, "blocks.3.0") and split_qualified("head") == ("", "head")
    with pytest.raises(H2TError, match="is a composite backbone"):
        create_backbone(PAIR, weights="random")


def test_union_reads_each_members_own_entry_and_extracts_only_the_missing_member(tmp_path, members):
    task = get_task("faces")
    cache = FeatureCache(str(tmp_path))
    alone = FeatureProvider(members[0], store=cache, progress=False)
    single = alone.get(task, "train", [64])[64]
    assert alone.forward_passes == 100
    union = UnionProvider([FeatureProvider(b, store=cache, progress=False) for b in members])
    feats = union.get(task, "train", [64])[64]
    assert union.forward_passes == 100  # Lite2 only: Lite0's entry was read, not re-extracted
    assert union.keys(task, "train", 64, cache.dtype) == [feature_key(task, "train", b, 64, cache.dtype) for b in members]
    assert all(cache.contains(k) for k in union.keys(task, "train", 64, cache.dtype))
    assert feats.layer_names == [f"{b.name}/{n}" for b in members for n in b.layer_names]
    for n in single.layer_names:
        assert np.array_equal(feats.layers[f"{L0}/{n}"], single.layers[n])
    assert np.array_equal(feats.labels, single.labels)
    again = UnionProvider([FeatureProvider(b, store=cache, progress=False) for b in members])
    part = again.get(task, "train", [64], layers=[f"{L2}/head", f"{L0}/pre_logits"])[64]
    assert again.forward_passes == 0 and part.layer_names == [f"{L0}/pre_logits", f"{L2}/head"]
    with pytest.raises(KeyError, match="names no member"):
        again.get(task, "train", [64], layers=["pre_logits"])


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory):
    """One cache for the CLI tests: the first extracts both members, the others read them."""
    return tmp_path_factory.mktemp("cache")


def _run(tmp_path, capsys, backbone: str, method: str) -> dict:
    from jobs.cli import main

    args = ["run", "--task", "faces", "--backbone", backbone, "--weights", "random", "--input-size", "32", "--method", method,
            "--lr", "0.1", "--steps", "20", "--coef", "1e-4", "--target-size", "64", "--cache", str(tmp_path), "--device", "cpu",
            "--json"]
    if METHODS[method].needs_keep_fractions:
        args += ["--keep-fraction", "0.2"]
    assert main(args) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("method", list(METHODS))
def test_every_feature_method_runs_on_a_composite_and_says_where_kept_features_came_from(shared_cache, capsys, method):
    out = _run(shared_cache, capsys, PAIR, method)
    assert out["backbone"] == PAIR and out["members"] == [L0, L2]
    cands, kept = out["candidates_per_backbone"], out["kept_per_backbone"]
    assert sum(cands.values()) == out["n_features_total"] and sum(kept.values()) == out["n_features_kept"]
    assert abs(sum(out["kept_share_per_backbone"].values()) - 1) < 1e-3
    if method == "linear":  # the rule: every member's pre_logits, concatenated
        assert cands == {L0: 1280, L2: 1280}
    if METHODS[method].selection is not None:
        assert all(split_qualified(layer)[0] in (L0, L2) for layer in out["kept_per_layer"])
        assert 0 < out["n_features_kept"] < out["n_features_total"]
    single = _run(shared_cache, capsys, L2, method)  # reads the member entry the composite run wrote
    assert single["forward_passes"] == 0 and single["n_features_total"] == cands[L2]


def test_image_methods_refuse_a_composite(capsys):
    from jobs.cli import main

    assert main(["run", "--task", "faces", "--backbone", PAIR, "--method", "finetune", "--weights", "random"]) == 2
    assert "composite backbones work with the feature methods" in capsys.readouterr().err


# --- sweeps: a composite config entry, its members' extraction and keys, the trial-side readers ---

def _sweep(tmp_path, test_features: str = "cache"):
    from orchestrator.config import SweepConfig

    return SweepConfig(name="multi", tasks=["faces"], test_features=test_features, cache=str(tmp_path),
                       backbones=[{"name": L0, "weights": "random", "input_size": 32},
                                  {"name": PAIR, "weights": "random", "input_size": 32}],
                       methods={"linear": {"lr": [0.1], "steps": [10], "target_size": [64]},
                                "head2toe": {"lr": [0.1], "steps": [10], "coef": [1e-4], "target_size": [64],
                                             "keep_fractions": [0.2]}})


def test_config_entry_expands_to_its_members_for_extraction_and_keys(tmp_path, members):
    from pydantic import ValidationError

    from orchestrator.config import SweepConfig
    from orchestrator.features import backbone_id, composite_key, sweep_keys
    from orchestrator.plan import extraction_needs

    cfg = _sweep(tmp_path)
    assert [bb.name for _, bb, _ in extraction_needs(cfg)] == [L0, L2]  # Lite0 once, shared with the single entry
    keys = sweep_keys(cfg, ("train", "test"))
    pair, (l0, l2) = cfg.backbones[1], cfg.backbones[1].members()
    task = get_task("faces")
    for split in ("train", "test"):
        want = {b.name: feature_key(task, split, b, 64) for b in members}
        assert keys[("faces", backbone_id(l0), split, 64)] == want[L0] and keys[("faces", backbone_id(l2), split, 64)] == want[L2]
        assert keys[("faces", backbone_id(pair), split, 64)] == composite_key(want)
    with pytest.raises(ValidationError, match="bad composite backbone"):
        SweepConfig(name="x", tasks=["faces"], backbones=[f"{L0}+{L0}"], methods={"linear": {"lr": [0.1], "steps": [1]}})


def test_trial_readers_zip_member_entries_row_by_row(tmp_path, members, monkeypatch):
    from orchestrator.features import check_entry, composite_key, iter_entry, load_train, release_train, stream_features

    task = get_task("faces")
    cache = FeatureCache(str(tmp_path))
    FeatureProvider(members[0], store=cache, progress=False).get(task, "test", [64])
    monkeypatch.setattr("head2toe.cache.format.ROW_GROUP_BYTES", 20_000)  # Lite2's entry: other row-group bounds
    FeatureProvider(members[1], store=cache, progress=False).get(task, "test", [64])
    singles = {b.name: cache.load(feature_key(task, "test", b, 64, cache.dtype)) for b in members}
    key = composite_key({b.name: feature_key(task, "test", b, 64, cache.dtype) for b in members})
    chunks = list(iter_entry(str(tmp_path), key, None, task.num_classes))
    assert len(chunks) > 1 and sum(len(c) for c in chunks) == 100 == check_entry(str(tmp_path), key, task.num_classes)
    x = load_train(str(tmp_path), key, None, task.num_classes)
    assert list(x.widths) == [f"{m}/{n}" for m, f in singles.items() for n in f.layer_names]
    for m, f in singles.items():
        for n, block in f.layers.items():
            assert np.array_equal(np.concatenate([c.layers[f"{m}/{n}"] for c in chunks]), block)
    linear = load_train(str(tmp_path), key, ["pre_logits"], task.num_classes)  # Linear's read: every member's pre_logits
    assert linear.widths == {f"{L0}/pre_logits": 1280, f"{L2}/pre_logits": 1280}
    release_train()
    bb = _sweep(tmp_path, "stream").backbones[1]  # stream-mode final trials: each member runs on the same batches
    streamed = list(stream_features(bb, task.load("test"), {64: ["pre_logits", f"{L2}/head"]}, "cpu"))
    got = {n: np.concatenate([b[64].layers[n] for b in streamed]) for n in streamed[0][64].layer_names}
    assert list(got) == [f"{L0}/pre_logits", f"{L2}/pre_logits", f"{L2}/head"]
    assert np.allclose(got[f"{L2}/head"].astype(np.float32), singles[L2].layers["head"].astype(np.float32), atol=1e-2)


def test_plan_counts_a_composite_as_its_members(tmp_path):
    from orchestrator.capacity import ASSUMPTIONS, plan_capacity

    cfg = _sweep(tmp_path, "stream")
    plan = plan_capacity(cfg)
    shapes = {s.name: s for s in plan.backbones}
    assert set(shapes) == {L0, L2, PAIR}
    real = {n: create_backbone(n, weights="random", input_size=32) for n in (L0, L2)}
    assert shapes[PAIR].widths[64] == sum(shapes[n].widths[64] for n in (L0, L2)) == sum(
        sum(layer_widths(b, 64).values()) for b in real.values())
    assert shapes[PAIR].pre_logits[64] == 2560 and shapes[PAIR].params == shapes[L0].params + shapes[L2].params
    workers = [k for k in plan.memory if k.startswith("extraction worker")]
    assert workers == [f"extraction worker ({L0})", f"extraction worker ({L2})"]
    test_rows = get_task("faces").split_sizes()["test"]  # stream: Lite0's entry runs Lite0, the composite Lite0 and Lite2
    want = (2 * test_rows / ASSUMPTIONS.extract_rate(L0) + test_rows / ASSUMPTIONS.extract_rate(L2)) / 3600
    assert plan.gpu_hours["extraction, test splits (final stage with test_features: stream)"] == pytest.approx(want)


def test_report_table_gives_each_members_share_of_a_composites_kept_features():
    import pandas as pd

    from analysis.multi_backbone import backbone_table, member_share

    sel = {"layers": {f"{L0}/head": [1, 2, 3], f"{L2}/head": [0], f"{L2}/logits": [4, 5, 6, 7]}, "widths": {}}
    assert member_share(sel) == {L0: 3 / 8, L2: 5 / 8}
    base = {"stage": "final", "method": "head2toe", "seed": 0, "target_size": 512}
    runs = pd.DataFrame([{**base, "run_id": "a", "task": "faces", "backbone": L0, "test_accuracy": 0.9,
                          "n_features_total": 100, "n_features_kept": 5},
                         {**base, "run_id": "b", "task": "faces", "backbone": PAIR, "test_accuracy": 0.95,
                          "n_features_total": 300, "n_features_kept": 8}])
    table = backbone_table(runs, {"b": sel}).set_index("backbone")
    assert table.loc[PAIR, "kept_share"] == f"{L0} 37.5%, {L2} 62.5%" and table.loc[L0, "kept_share"] == ""
    assert table.loc[PAIR, "test_accuracy"] == pytest.approx(95.0) and table.loc[PAIR, "candidates"] == 300
    assert backbone_table(runs[runs["backbone"] == L0], {}).empty  # no composite: no section
