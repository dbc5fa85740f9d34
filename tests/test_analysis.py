"""analysis/: tables, dedup of retries, overlap, affinity, ablations, cost and the published
numbers, on real MLflow stores the tests create (tests/mlflow_fixtures.py)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from mlflow_fixtures import SCRATCH_ACC, SEEDS, SMALL_ACC, SMALL_TASKS, StoreBuilder, small_store, store_dir, task_offset  # noqa: F401

import analysis
from analysis import ablations, affinity, published
from analysis.catalog import VTAB_TASKS
from analysis.overlap import iou, overlap_coefficient
from analysis.tables import MEAN


SLIDES = Path(__file__).resolve().parents[2] / "shared" / "seeds" / "head2toe-icml22-slides.txt"


@pytest.fixture(scope="module")
def runs(small_store):
    return analysis.load_runs(small_store.uri, small_store.experiment)


@pytest.fixture(scope="module")
def table(runs):
    return analysis.paper_table(runs, "resnet50")


def test_table_cells_equal_mean_of_logged_runs(small_store, table):
    client = MlflowClient(small_store.uri)
    exp = client.get_experiment_by_name(small_store.experiment).experiment_id
    logged: dict[tuple[str, str], list[float]] = {}
    for r in client.search_runs([exp], "tags.`h2t.stage` = 'final' and attributes.status = 'FINISHED'", max_results=5000):
        logged.setdefault((r.data.params["method"], r.data.params["task"]), []).append(r.data.metrics["test_accuracy"])
    assert ("linear", "digits") in logged
    assert {m for m, _ in logged} - set(table.mean.index) == {"head2toe_layers"}  # an ablation, not a table row
    for (method, task), values in logged.items():
        if method == "head2toe_layers":
            continue
        assert table.mean.loc[method, task] == pytest.approx(100 * np.mean(values))
        assert table.std.loc[method, task] == pytest.approx(100 * np.std(values, ddof=1))
        assert table.n.loc[method, task] == len(values)
    # and by hand: seeds add 1 point each, so the mean is seed 1's value and the std 1 point
    for method, acc in SMALL_ACC.items():
        if method in table.mean.index:
            for task in SMALL_TASKS:
                assert table.mean.loc[method, task] == pytest.approx(100 * (acc + task_offset(task) + 0.01))
    assert table.mean.loc["linear", MEAN] == pytest.approx(table.mean.loc["linear", list(SMALL_TASKS)].mean())


def test_table_layout_paper_order_groups_and_best(table):
    assert list(table.mean.index) == ["linear", "all_l2", "head2toe", "scratch"]  # paper order; no ablation row
    assert table.tasks == ["caltech101", "eurosat", "clevr_count", "digits"]  # Natural, Specialized, Structured, Offline
    frame = table.frame()
    assert list(frame.columns.get_level_values("group")) == ["Natural", "Specialized", "Structured", "Offline", ""]
    assert frame.loc["Head2Toe", ("Natural", "Caltech101")] == "71.0 ± 1.0"
    assert frame.loc["Scratch", ("", "Mean")] == "31.0†"  # mean over 1 of 4 tasks, flagged
    assert table.best().loc["head2toe"].all() and not table.best().loc["linear"].any()
    md, tex, html = table.to_markdown(), table.to_latex(), table.to_html()
    assert "**71.0 ± 1.0**" in md and "Natural: Caltech101" in md and "Offline: digits" in md
    assert r"\textbf{71.0 $\pm$ 1.0}" in tex and r"\multicolumn{1}{c}{Natural}" in tex and r"All-$\ell$2" in tex
    assert '<td class="best">71.0 ± 1.0</td>' in html and '<th colspan="1">Specialized</th>' in html
    assert set(table.long().columns) >= {"method", "task", "mean", "std", "n_seeds"}


def test_failed_run_and_finished_retry_count_once(store_dir):
    b = StoreBuilder(store_dir)
    b.final("dtd", "resnet50", "linear", 0, 0.11, status="FAILED")  # logged a metric, then died
    b.final("dtd", "resnet50", "linear", 0, 0.50)  # retry, same trial key
    b.final("dtd", "resnet50", "linear", 1, 0.40)
    b.final("dtd", "resnet50", "linear", 1, 0.60)  # a second FINISHED run of one key: the newest counts
    runs = analysis.load_runs(b.uri, b.experiment)
    assert len(runs) == 2 and runs["trial_key"].is_unique
    cell = analysis.paper_table(runs, "resnet50")
    assert cell.n.loc["linear", "dtd"] == 2
    assert cell.mean.loc["linear", "dtd"] == pytest.approx(55.0)
    assert len(analysis.load_runs(b.uri, b.experiment, every_run=True)) == 4


def test_small_store_retry_not_counted(runs, small_store):
    every = analysis.load_runs(small_store.uri, small_store.experiment, every_run=True)
    assert (every["status"] == "FAILED").sum() == 1
    assert len(every) == len(runs) + 1
    assert runs["test_accuracy"].min() > 0  # the failed run logged 0.0


def test_missing_store_and_experiment_are_user_errors(tmp_path, small_store):
    with pytest.raises(analysis.NoRunsError, match="no MLflow store"):
        analysis.load_runs(f"sqlite:///{tmp_path / 'absent.db'}")
    assert not (tmp_path / "absent.db").exists()
    with pytest.raises(analysis.NoRunsError, match="h2t-test"):
        analysis.load_runs(small_store.uri, "no-such-experiment")


def test_overlap_identical_one_disjoint_zero():
    a = {"layers": {"l1": np.array([0, 1, 2]), "l2": np.array([5])}, "widths": {"l1": 10, "l2": 10}}
    same = {"layers": {"l1": np.array([0, 1, 2]), "l2": np.array([5])}, "widths": {"l1": 10, "l2": 10}}
    disjoint = {"layers": {"l1": np.array([3, 4]), "l2": np.array([0, 1])}, "widths": {"l1": 10, "l2": 10}}
    # same column index in another layer is another feature
    other_layer = {"layers": {"l1": np.array([5]), "l2": np.array([0, 1, 2])}, "widths": {"l1": 10, "l2": 10}}
    coef, jac = analysis.pairwise_overlap({"a": a, "same": same, "disjoint": disjoint, "other": other_layer})
    assert coef.loc["a", "same"] == 1 and jac.loc["a", "same"] == 1
    assert coef.loc["a", "disjoint"] == 0 and jac.loc["a", "disjoint"] == 0
    assert coef.loc["a", "other"] == 0
    assert np.allclose(coef.to_numpy(), coef.to_numpy().T) and (np.diag(coef) == 1).all()
    assert overlap_coefficient({1, 2}, {1, 2, 3, 4}) == 1.0 and iou({1, 2}, {1, 2, 3, 4}) == 0.5


def test_layer_share_rows_sum_to_one():
    sel = {"t1": {"layers": {"a": np.arange(3), "b": np.arange(1)}, "widths": {"a": 5, "b": 5}},
           "t2": {"layers": {"a": np.arange(0), "b": np.arange(4)}, "widths": {"a": 5, "b": 5}}}
    share = analysis.layer_share(sel)
    assert list(share.columns) == ["a", "b"]
    assert share.loc["t1", "a"] == 0.75 and share.loc["t2", "b"] == 1.0
    assert np.allclose(share.sum(axis=1), 1)


def test_selections_from_artefacts(runs, small_store):
    selections = analysis.load_selections(small_store.uri, runs)
    assert len(selections) == len(SMALL_TASKS) * 2 * len(SEEDS)  # head2toe + head2toe_layers finals
    chosen = analysis.task_selections(runs, selections, "resnet50")
    assert list(chosen) == ["caltech101", "eurosat", "clevr_count", "digits"]
    assert all(sum(map(len, s["layers"].values())) == 20 for s in chosen.values())
    coef, jac = analysis.pairwise_overlap(chosen)
    assert ((coef >= jac) | coef.isna()).all().all()


def test_affinity_equals_linear_minus_scratch(table):
    aff = analysis.domain_affinity(table).set_index("task")
    mean = table.mean
    assert aff.loc["caltech101", "scratch_source"] == "ours"
    assert aff.loc["caltech101", "affinity"] == pytest.approx(mean.loc["linear", "caltech101"] - mean.loc["scratch", "caltech101"])
    assert aff.loc["caltech101", "scratch"] == pytest.approx(100 * (SCRATCH_ACC["caltech101"] + 0.01))
    paper = analysis.published_table("resnet50")
    assert aff.loc["eurosat", "scratch_source"] == "paper (resnet50)"
    assert aff.loc["eurosat", "affinity"] == pytest.approx(mean.loc["linear", "eurosat"] - paper.loc["scratch", "eurosat"])
    assert aff.loc["digits", "scratch_source"] == "none" and np.isnan(aff.loc["digits", "affinity"])
    assert (aff["gain"] == aff["head2toe"] - aff["linear"]).all()


def test_compare_with_published(table):
    comp = analysis.compare(table)
    assert set(comp["task"]) == {"caltech101", "eurosat", "clevr_count"}  # digits is not in the paper
    row = comp[(comp["method"] == "head2toe") & (comp["task"] == "caltech101")].iloc[0]
    assert row["paper"] == 88.8 and row["diff"] == pytest.approx(row["ours"] - 88.8)
    assert analysis.compare(analysis.PaperTable("efficientnet_lite0", table.mean, table.std, table.n, table.mean_tasks)).empty


def test_layers_vs_features_at_equal_budget(runs):
    lvf = analysis.layers_vs_features(runs).set_index(["task", "keep_fraction"])
    # best over target sizes: 512 (+2 points); at kf 0.1 accuracy is the trial's base
    assert lvf.loc[("caltech101", 0.1), "features_acc"] == pytest.approx(100 * (SMALL_ACC["head2toe"] + 0.02))
    assert lvf.loc[("caltech101", 0.1), "layers_acc"] == pytest.approx(100 * (SMALL_ACC["head2toe_layers"] + 0.02))
    assert lvf.loc[("caltech101", 0.05), "features_kept"] == 10


def test_accuracy_vs_target_size_and_layers(runs, small_store):
    sizes = analysis.accuracy_vs_target_size(runs)
    h2t = sizes[(sizes["task"] == "caltech101") & (sizes["method"] == "head2toe")].set_index("target_size")["val_accuracy"]
    assert h2t.loc[256] == pytest.approx(70) and h2t.loc[512] == pytest.approx(72)
    used = analysis.accuracy_vs_layers(runs, analysis.load_selections(small_store.uri, runs))
    assert (used["layers_total"] == 4).all() and used["layers_used"].between(1, 4).all()



def test_ablation_summaries_count_wins(runs):
    lvf = analysis.layers_vs_features(runs)
    # 4 tasks x 2 keep fractions; features 0.70 vs layers 0.66 at every pair
    assert ablations.features_vs_layers_summary(lvf).startswith("Features beat layers at 8 of 8 (task, keep fraction) pairs (0 ties), by +4.0")
    assert ablations.features_vs_layers_summary(lvf.iloc[0:0]) == ""
    text = ablations.target_size_summary(analysis.accuracy_vs_target_size(runs))
    assert "resnet50 head2toe: T=512 beats T=256 on 4 of 4 tasks (0 ties; +2.0 points on average)." in text
    assert "resnet50 head2toe_layers: T=512 beats T=256 on 4 of 4 tasks" in text


@pytest.fixture(scope="module")
def offline_table(tmp_path_factory):
    """An embedded-default-like sweep: efficientnet_lite0 on offline tasks, with our own Scratch."""
    b = StoreBuilder(tmp_path_factory.mktemp("offline"))
    acc = {"synth_dsprites_loc": (0.33, 0.50, 0.69), "synth_clevr_count": (0.44, 0.30, 0.60), "digits": (0.92, 0.78, 0.976)}
    for task, (linear, scratch, h2t) in acc.items():
        for method, value in (("linear", linear), ("scratch", scratch), ("head2toe", h2t)):
            b.final(task, "efficientnet_lite0", method, 0, value, task_group="Offline")
    return analysis.paper_table(analysis.load_runs(b.uri, b.experiment), "efficientnet_lite0")


def test_offline_sweep_says_why_it_has_no_paper_rows_and_which_it_would_compare(offline_table):
    tables = {"efficientnet_lite0": offline_table}
    assert analysis.compare(offline_table).empty
    why = published.why_no_comparison(tables)
    assert "the paper has no table for efficientnet_lite0" in why and "synth_dsprites_loc (imitates dsprites_loc)" in why
    assert "digits" in why and "not VTAB-1k tasks" in why
    rows = published.paper_rows(tables).set_index("method")
    assert list(rows.index) == ["Linear", "Head2Toe", "Scratch"]  # the paper's order
    assert rows.loc["Linear"].tolist() == [57.0, 52.8] and rows.loc["Scratch"].tolist() == [42.1, 32.8]
    stand = published.stand_in_rows(tables).set_index(["task", "method"])
    assert set(stand.index.get_level_values("task")) == {"synth_dsprites_loc", "synth_clevr_count"}  # digits imitates none
    assert stand.loc[("synth_dsprites_loc", "Linear"), "ours"] == pytest.approx(33.0)
    assert stand.loc[("synth_dsprites_loc", "Linear"), "paper resnet50 (on the VTAB task)"] == 40.4
    assert stand.loc[("synth_clevr_count", "Head2Toe"), "imitates"] == "clevr_count"
    assert published.why_no_comparison({"resnet50": analysis.PaperTable(
        "resnet50", offline_table.mean[[]], offline_table.std[[]], offline_table.n[[]], offline_table.mean_tasks)}) == ""


def test_affinity_from_our_scratch_and_its_correlation_with_the_gain(offline_table):
    aff = analysis.domain_affinity(offline_table).set_index("task")
    assert set(aff["scratch_source"]) == {"ours"}
    assert aff.loc["synth_dsprites_loc", "affinity"] == pytest.approx(33 - 50)
    r = np.corrcoef(aff["affinity"], aff["gain"])[0, 1]
    line = affinity.gain_vs_affinity(aff.reset_index())
    assert line.startswith(f"Over 3 tasks, corr(affinity, gain) = {r:+.2f}") and "lowest affinity is synth_dsprites_loc (-17.0)" in line
    assert affinity.gain_vs_affinity(aff.reset_index().iloc[:2]) == ""


# -- published numbers --------------------------------------------------------------------
PUBLISHED_MEANS = {("resnet50", "linear"): 57.0, ("resnet50", "head2toe"): 65.8, ("resnet50", "finetune"): 63.6,
                   ("resnet50", "all_l2"): 63.3, ("resnet50", "all_l1"): 64.6, ("resnet50", "all_group"): 64.3,
                   ("resnet50", "scratch"): 42.1,
                   ("vit_b16", "linear"): 52.8, ("vit_b16", "head2toe"): 63.3, ("vit_b16", "finetune"): 63.2,
                   ("vit_b16", "all_l2"): 61.8, ("vit_b16", "all_l1"): 62.4, ("vit_b16", "all_group"): 62.7,
                   ("vit_b16", "scratch"): 32.8, ("vit_b16", "head2toe_ft"): 65.0, ("vit_b16", "head2toe_ft_plus"): 67.9}


@pytest.mark.parametrize("backbone", ["resnet50", "vit_b16"])
def test_published_tables_match_the_slides(backbone):
    table = analysis.published_table(backbone)
    assert list(table.columns) == [*VTAB_TASKS, MEAN]
    for method, row in table.iterrows():
        assert row[MEAN] == PUBLISHED_MEANS[(backbone, method)]
        assert row[list(VTAB_TASKS)].notna().sum() == 19
        assert abs(row[list(VTAB_TASKS)].mean() - row[MEAN]) <= 0.1, method  # the printed mean rounds the 19
    assert {m for b, m in PUBLISHED_MEANS if b == backbone} == set(table.index)
    assert analysis.published_table("vit_base_patch16_224") is not None and analysis.published_table("efficientnet_lite0") is None


@pytest.mark.skipif(not SLIDES.exists(), reason="the slides are not in this checkout")
def test_published_tables_equal_every_cell_of_the_slides():
    text = SLIDES.read_text()
    sections = {"resnet50": text.split("Results on ResNet-50")[1].split("Results on ViT-B/16")[0],
                "vit_b16": text.split("Results on ViT-B/16")[1].split("Cost of Head2Toe")[0]}
    for backbone, section in sections.items():
        rows = [r for r in (line.split("\t") for line in section.splitlines()) if len(r) == 21 and r[1][:1].isdigit()]
        printed = [[float(v) for v in r[1:]] for r in rows]
        assert printed == analysis.published_table(backbone).to_numpy().tolist()


def test_published_cost_table_and_formula():
    cost = analysis.published_cost()
    assert len(cost) == 20 and cost.iloc[-1]["task"] == "average"
    assert cost.set_index("task").loc["cifar100", ["keep_fraction", "n_features_total", "num_classes"]].tolist() == [0.2, 30440, 100]
    check = analysis.paper_cost_check().set_index("task")
    # rows whose printed cells are all consistent are reproduced by the formula
    for task in ["cifar100", "clevr_dist", "retinopathy", "dmlab", "dsprites_ori", "dsprites_loc"]:
        assert check.loc[task, "slide_consistent"], task
    assert check.loc["caltech101", "size_vs_linear_formula"] == pytest.approx(2.353167, rel=1e-5)
    # by hand: k C + F/32 over D C for ResNet-50
    r = analysis.head2toe_cost(30440, 6088, 100, "resnet50")
    assert r["size_vs_linear"] == pytest.approx((6088 * 100 + 30440 / 32) / (2048 * 100))
    assert r["flops_vs_finetune"] == pytest.approx((1000 * 4.1e9 + 1.18 * 2 * 500 * 128 * 30440 * 100) / (3 * 500 * 128 * 4.1e9))


def test_cost_table_from_runs(runs):
    cost = analysis.cost_table(runs).set_index("task")
    assert set(cost.index) == set(SMALL_TASKS)  # digits' classes come from the task registry
    assert cost.loc["digits", "num_classes"] == 10 and np.isnan(cost.loc["digits", "paper_size_vs_linear"])
    assert cost.loc["caltech101", "size_vs_linear"] == pytest.approx((20 * 102 + 200 / 32) / (2048 * 102))
    assert cost.loc["caltech101", "paper_size_vs_linear"] == pytest.approx(2.353167)


def test_analysis_never_imports_ray():
    code = "import sys, analysis, analysis.report, jobs.report; assert 'ray' not in sys.modules, 'ray imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])
