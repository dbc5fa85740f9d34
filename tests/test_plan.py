"""`h2t plan`: the capacity plan agrees with the code that does the work, and refuses what cannot fit.

Candidate counts are checked against a real forward pass of the same random-init models, trial
counts against orchestrator.plan, cache bytes against head2toe.cache.plan_split (what extraction
writes), and the refusal through the real CLI in a subprocess (what the user sees). No Ray, no
data beyond the offline tasks' split sizes.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from head2toe.backbones import create_backbone
from head2toe.cache import file_bytes, open_cache, plan_split
from head2toe.errors import H2TError
from head2toe.methods import HParams
from head2toe.pooling import pooled_size
from head2toe.tasks import get_task
from orchestrator.capacity import ASSUMPTIONS, check_fits, plan_capacity
from orchestrator.config import Resources, SweepConfig, load_config, parse_bytes
from orchestrator.plan import FeatureTrial, ImageTrial, cv_specs, final_specs, image_cv_specs, single_candidates

REPO = Path(__file__).resolve().parents[1]


def config(**changes) -> SweepConfig:
    body = {"name": "plan_test", "tasks": ["synth_dsprites_loc", "faces"],
            "backbones": [{"name": "efficientnet_lite0", "input_size": 64}],
            "methods": {"linear": {"lr": [0.1], "steps": [10], "target_size": [16, 512]},
                        "head2toe": {"lr": [0.1], "steps": [10, 20], "coef": [1e-4], "target_size": [512], "keep_fractions": [0.05, 0.2]}},
            "folds": [0, 1]}
    return SweepConfig(**{**body, **changes})


def h2t(*args: str) -> tuple[subprocess.CompletedProcess, float]:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "jobs.cli", *args], capture_output=True, text=True, timeout=180, cwd=REPO)
    return proc, time.perf_counter() - start


@pytest.mark.parametrize("name", ["efficientnet_lite0", "mobilenetv3_small_050"])  # registered, and a bare timm name
def test_candidates_equal_a_real_forward(name):
    cfg = config(backbones=[{"name": name, "input_size": 64}])
    (shape,) = plan_capacity(cfg).backbones
    real = create_backbone(name, weights="random", input_size=64)
    info = real.feature_info()  # one real CPU forward; the plan built its model on the meta device
    assert shape.layers == len(info) and shape.params == sum(p.numel() for p in real.model.parameters())
    for t in (16, 512):
        assert shape.widths[t] == sum(pooled_size(tuple(i["shape"]), t) for i in info)
        assert shape.pre_logits[t] == pooled_size(tuple(next(i for i in info if i["name"] == "pre_logits")["shape"]), t)


def _best(cfg: SweepConfig) -> dict:
    """A CV outcome for every (task, backbone, method): each grid's first point."""
    best = {}
    for t in cfg.tasks:
        for bb in cfg.backbones:
            for m, g in cfg.feature_grids().items():
                hp: HParams = g.hparams()[0]
                best[(t, bb.name, m)] = {**hp.as_dict(), "keep_fraction": hp.keep_fractions[0] if hp.keep_fractions else None}
            for m, points in cfg.image_grids().items():
                best[(t, bb.name, m)] = points[0].as_dict()
    return best


@pytest.mark.parametrize("path", ["configs/demo.yaml", "configs/paper_vit_b16.yaml"])
@pytest.mark.parametrize("batch", [True, False])
def test_trial_counts_equal_orchestrator_plan(path, batch):
    cfg = load_config(REPO / path, batch_hparams=batch)
    plan = plan_capacity(cfg)
    cv, finals = cv_specs(cfg), final_specs(cfg, _best(cfg))
    assert plan.trials["cv"] == {"feature_trials": len(cv), "feature_runs": sum(len(s.hps) for s in cv),
                                 "image_trials": len(image_cv_specs(cfg))}
    assert plan.trials["final"] == {"feature_trials": len({(s.task, s.backbone) for s in finals if isinstance(s, FeatureTrial)}),  # one per task x backbone
                                    "feature_runs": sum(1 for s in finals if isinstance(s, FeatureTrial)),
                                    "image_trials": sum(1 for s in finals if isinstance(s, ImageTrial))}
    assert plan.trials["cv"]["feature_trials"] > 0 and plan.trials["final"]["feature_trials"] > 0


def test_cache_bytes_equal_what_extraction_plans(tmp_path):
    cfg = config()
    plan = plan_capacity(cfg)
    cache, bb = open_cache(str(tmp_path / "cache")), create_backbone("efficientnet_lite0", weights="random", input_size=64)
    expected = {(i.task, i.split, i.target_size): (i.rows, i.features, i.bytes)
                for t in cfg.tasks for split in ("train", "test") for i in plan_split(cache, bb, get_task(t), split, [16, 512])}
    got = {(r["task"], r["split"], r["target_size"]): (r["rows"], r["features"], r["bytes"]) for r in plan.storage}
    assert got == expected and len(got) == 2 * 2 * 2
    assert all(b == file_bytes(n, f, "float16") for n, f, b in got.values())
    train = sum(b for (_, s, _), (_, _, b) in got.items() if s == "train")
    assert plan.storage_bytes("stream") == train and plan.storage_bytes("cache") == sum(b for *_, b in got.values()) > train


def test_gpu_hours_follow_the_stated_assumptions():
    cfg = config(methods={"linear": {"lr": [0.1, 0.01], "steps": [10, 30], "target_size": [16]}})
    plan = plan_capacity(cfg)
    sizes = {t: get_task(t).split_sizes() for t in cfg.tasks}
    rate = ASSUMPTIONS.extract_rate("efficientnet_lite0")
    assert plan.gpu_hours["extraction, train splits"] == pytest.approx(sum(s["train"] for s in sizes.values()) / rate / 3600)
    # heads trained together all run the longest schedule: 6*B*F*C*K FLOPs per step
    f = plan.backbones[0].pre_logits[16]
    flops = sum(6 * min(128, sizes[s.task]["train"]) * f * get_task(s.task).num_classes * len(s.hps) * max(h.steps for h in s.hps)
                for s in cv_specs(cfg))
    assert plan.gpu_hours["probe trials, CV"] == pytest.approx(flops / (ASSUMPTIONS.probe_tflops * 1e12 * 3600))


def test_memory_resources_parse_and_reach_tune():
    assert parse_bytes("16GiB") == 16 << 30 and parse_bytes("2.5GB") == 2_500_000_000 and parse_bytes(512) == 512
    assert Resources(cpu=2, memory="1 GiB").as_tune() == {"cpu": 2, "gpu": 0, "memory": 1 << 30}
    assert Resources().as_tune() == {"cpu": 1, "gpu": 0}  # unset: Ray is asked for no memory
    with pytest.raises(ValueError, match="16GiB"):
        Resources(memory="lots")


def test_image_trials_are_planned_at_image_input_size():
    """Scratch/finetune train at image_input_size: the plan's images and saved activations scale with
    its pixel count, not with the extraction's input_size."""
    def image_memory(**bb) -> dict[str, int]:
        cfg = config(backbones=[{"name": "efficientnet_lite0", "input_size": 64, **bb}], methods={"scratch": {"lr": [0.05], "steps": [10]}})
        (m,) = [v["host"] for k, v in plan_capacity(cfg).memory.items() if k.startswith("image trial")]
        return m

    full, small = image_memory(), image_memory(image_input_size=32)
    assert full["training images (uint8 at 64 px)"] == 4 * small["training images (uint8 at 32 px)"] > 0
    (act_full,), (act_small,) = ([v for k, v in m.items() if k.startswith("saved activations")] for m in (full, small))
    assert act_full == pytest.approx(4 * act_small, rel=1e-6)


def test_host_memory_grant_is_checked():
    with pytest.raises(H2TError, match=r"trial task=synth_dsprites_loc .*host memory.*resources\.trial\.memory >= ") as refused:
        check_fits(config(resources={"trial": {"memory": "1GiB"}}))  # the worker alone is ~1 GiB
    suggested = re.search(r"resources\.trial\.memory >= (\S+)$", str(refused.value)).group(1)
    check_fits(config(resources={"trial": {"memory": suggested}}))  # the size the line names is enough


def _tight_gpu_config(tmp_path: Path) -> tuple[dict, Path]:
    """A config whose 12-head CV trials overflow their GPU share while one head per trial fits."""
    body = {"name": "tight", "tasks": ["synth_dsprites_loc"], "backbones": [{"name": "efficientnet_lite0", "input_size": 64}],
            "methods": {"all_l2": {"lr": [0.1, 0.01], "steps": [10, 20], "coef": [1e-5, 1e-4, 1e-3], "target_size": [8192]}},
            "folds": [0], "resources": {"trial": {"gpu": 0.5}, "gpu_memory": "1TiB"}}
    wide = plan_capacity(SweepConfig(**body)).largest_probe
    narrow = plan_capacity(SweepConfig(**{**body, "batch_hparams": False})).largest_probe
    assert wide.heads == 12 and narrow.peak < wide.peak
    body["resources"]["gpu_memory"] = narrow.peak + wide.peak  # a 0.5 share holds their mean
    path = tmp_path / "tight.yaml"
    path.write_text(yaml.safe_dump(body))
    return body, path


def test_trial_that_cannot_fit_is_refused_by_plan_and_sweep(tmp_path):
    body, path = _tight_gpu_config(tmp_path)
    for command in (["plan", str(path)], ["sweep", str(path), "--out", str(tmp_path / "out"), "--cache", str(tmp_path / "cache")]):
        proc, elapsed = h2t(*command)
        err = proc.stderr.strip()
        assert proc.returncode == 2, (command, proc.returncode, err[-2000:])
        assert "Traceback" not in proc.stderr and len(err.splitlines()) == 1, err
        for fragment in ("cv trial task=synth_dsprites_loc backbone=efficientnet_lite0 method=all_l2 target_size=8192 (12 heads)",
                         "of GPU memory but is granted", "fix: batch_hparams: false", "resources.trial.gpu >= "):
            assert fragment in err, err
        if command[0] == "plan":
            assert "REFUSED" in proc.stdout and "Planned peak memory" in proc.stdout  # the report still prints
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()  # the sweep never started Ray

    # each fix the line names makes it fit
    share = float(re.search(r"or resources\.trial\.gpu >= ([0-9.]+)", err).group(1))
    check_fits(SweepConfig(**{**body, "resources": {**body["resources"], "trial": {"gpu": share}}}))
    check_fits(SweepConfig(**{**body, "batch_hparams": False}))


@pytest.mark.parametrize("name", ["paper_resnet50", "paper_vit_b16"])
def test_paper_configs_plan(name):
    proc, elapsed = h2t("plan", f"configs/{name}.yaml", "--json")
    plan = json.loads(proc.stdout)
    assert proc.returncode == (0 if plan["fits"] else 2), proc.stderr[-2000:]
    if not plan["fits"]:
        assert len(proc.stderr.strip().splitlines()) == 1 and plan["refused"][0]["what"] in proc.stderr
    modes = plan["storage"]["modes"]
    assert set(modes) == {"cache", "stream"} and modes["cache"] > 10 * modes["stream"] > 0  # VTAB-1k: test splits dominate
    assert modes["cache"] == sum(r["bytes"] for r in plan["storage"]["splits"])
    assert plan["target_sizes"] == [512, 8192, 16384] and len({r["task"] for r in plan["storage"]["splits"]}) == 19
    assert {"driver", "largest probe trial"} <= set(plan["memory"]) and any(k.startswith("extraction worker") for k in plan["memory"])
    assert plan["gpu_hours"]["total"] > 0 and plan["assumptions"]["probe_tflops"] > 0
    assert elapsed < 60


def test_final_trial_holds_every_final_head_and_has_its_own_grant():
    """One final trial per task x backbone fits every method x seed and keeps their heads for one
    pass over the test rows: each extra seed adds its heads (F x C float32) to that trial's peak."""
    grid = {"all_l2": {"lr": [0.1], "steps": [10], "coef": [1e-4], "target_size": [8192]}}
    one, three = (plan_capacity(config(tasks=["faces"], methods=grid, seeds=s)) for s in ([0], [0, 1, 2]))
    assert three.trials["final"] == {"feature_trials": 1, "feature_runs": 3, "image_trials": 0}
    f = one.backbones[0].widths[8192]
    assert one.largest_probe.held == 0 and three.largest_probe.stage == "final"
    assert three.largest_probe.held == 2 * f * get_task("faces").num_classes * 4
    fits_one = one.largest_probe.peak  # every CV trial and a final trial that holds one head
    tight = {"trial": {"memory": fits_one}, "final_trial": {"memory": fits_one}}
    with pytest.raises(H2TError, match=r"final trial task=faces .*resources\.final_trial\.memory >= ") as refused:
        check_fits(config(tasks=["faces"], methods=grid, seeds=[0, 1, 2], resources=tight))
    suggested = re.search(r"resources\.final_trial\.memory >= (\S+)$", str(refused.value)).group(1)
    check_fits(config(tasks=["faces"], methods=grid, seeds=[0, 1, 2],
                      resources={**tight, "final_trial": {"memory": suggested}}))  # CV trials keep their grant


def test_single_candidates_skip_cv_and_go_straight_to_their_final_trial():
    """`cv_single_candidate: skip`: a one-candidate grid (All-l2,1 here, Scratch) gets no CV
    trial, and its final trial is that candidate; a grid with a choice still runs CV."""
    methods = {"linear": {"lr": [0.1, 0.01], "steps": [10], "coef": [0.0], "target_size": [8]},
               "all_group": {"lr": [0.1], "steps": [10], "coef": [1e-4], "target_size": [8]},
               "head2toe": {"lr": [0.1], "steps": [10], "coef": [1e-4], "target_size": [8], "keep_fractions": [0.1]},
               "scratch": {"lr": [0.05], "steps": [5]}}
    run = config(methods=methods)
    skip = config(methods=methods, cv_single_candidate="skip")
    assert {s.method for s in cv_specs(run) + image_cv_specs(run)} == {"linear", "all_group", "head2toe", "scratch"}
    assert {s.method for s in cv_specs(skip) + image_cv_specs(skip)} == {"linear"}
    assert run.sweep_id() == skip.sweep_id()  # same finals: a resumed sweep may switch
    chosen = single_candidates(skip)
    assert set(chosen) == {(t, "efficientnet_lite0", m) for t in skip.tasks for m in ("all_group", "head2toe", "scratch")}
    assert single_candidates(run) == {}
    linear = {(t, "efficientnet_lite0", "linear"): {"lr": 0.01, "steps": 10, "coef": 0.0, "target_size": 8,
                                                     "keep_fraction": None, "mean_accuracy": 0.5} for t in skip.tasks}
    finals = final_specs(skip, {**chosen, **linear})
    by_method = {s.method: s for s in finals if s.task == skip.tasks[0]}
    assert set(by_method) == {"linear", "all_group", "head2toe", "scratch"}
    assert by_method["head2toe"].hps[0].keep_fractions == (0.1,) and by_method["all_group"].hps[0].coef == 1e-4
    assert by_method["scratch"].hp.steps == 5
