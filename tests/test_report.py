"""`h2t report` on a small sweep store: every file it promises, every figure embedded, the
folder logged to the sweep's run (`--sweep`), and the page rendered by headless Chromium
(`make install` puts Debian's chromium in place; without one that test skips)."""
from __future__ import annotations

import base64
import re
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from mlflow_fixtures import small_store  # noqa: F401

from jobs.cli import main as h2t

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import check_report_render  # noqa: E402

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def report(small_store, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report")
    assert h2t(["report", "--tracking-uri", small_store.uri, "--experiment", small_store.experiment, "--out", str(out),
                "--sweep", "latest"]) == 0
    return out


def test_report_is_logged_to_the_sweep_run(report, small_store):
    client = MlflowClient(small_store.uri)
    logged = {a.path for a in client.list_artifacts(small_store.sweep_run, "report")}
    assert {"report/report.html", "report/report.md", "report/csv", "report/figures", "report/tables"} <= logged
    figures = {Path(a.path).name for a in client.list_artifacts(small_store.sweep_run, "report/figures")}
    assert figures == {p.name for p in (report / "figures").glob("*.png")}


def test_report_for_an_unknown_sweep_is_one_line_error(small_store, tmp_path, capsys):
    out = tmp_path / "r"
    assert h2t(["report", "--tracking-uri", small_store.uri, "--experiment", small_store.experiment, "--out", str(out),
                "--sweep", "nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no sweep 'nope'" in err and "latest" in err
    assert not out.exists()  # refused before any work


def test_report_html_embeds_every_figure(report):
    page = (report / "report.html").read_text(encoding="utf-8")
    sources = re.findall(r"<img[^>]*\ssrc='([^']*)'", page)
    figures = sorted(p.stem for p in (report / "figures").glob("*.png"))
    assert len(sources) == len(figures) >= 8  # affinity, ours vs paper, layers vs features, overlap x2, layer share, ...
    assert {"affinity", "ours_vs_paper", "layers_vs_features", "overlap_resnet50", "iou_resnet50", "layer_share_resnet50",
            "target_size", "cost"} <= set(figures)
    for src in sources:
        if src.startswith("data:"):
            assert src.startswith("data:image/png;base64,") and base64.b64decode(src.split(",", 1)[1]).startswith(PNG)
        else:
            assert (report / src).is_file(), src
    assert "<table class=\"paper\">" in page and "Natural" in page and "Head2Toe" in page
    assert "http" not in re.sub(r"<a href='csv/[^']*'>", "", page).split("<body>", 1)[1]  # self-contained: nothing fetched


def test_report_writes_markdown_csvs_tables_and_pngs(report):
    md = (report / "report.md").read_text(encoding="utf-8")
    for link in re.findall(r"\]\(((?:figures|csv)/[^)]+)\)", md):
        assert (report / link).is_file(), link
    assert "| Method | Natural: Caltech101 |" in md
    for name in ["runs", "table_resnet50", "ours_vs_paper", "domain_affinity", "layers_vs_features", "overlap_resnet50",
                 "layer_share_resnet50", "accuracy_vs_target_size", "cost", "paper_cost_check"]:
        assert (report / "csv" / f"{name}.csv").stat().st_size > 0, name
    assert (report / "tables" / "resnet50.tex").read_text().startswith(r"\begin{tabular}")
    for png in (report / "figures").glob("*.png"):
        assert png.read_bytes().startswith(PNG) and png.stat().st_size > 5000, png


def test_report_without_store_is_one_line_error(tmp_path, capsys):
    assert h2t(["report", "--tracking-uri", f"sqlite:///{tmp_path / 'none.db'}", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no MLflow store" in err


@pytest.mark.skipif(check_report_render.find_browser() is None, reason="no chromium binary installed")
def test_report_renders_in_headless_chromium(report):
    shot = report / "screenshot.png"
    images = check_report_render.check(report / "report.html", screenshot=shot)
    assert len(images) == len(list((report / "figures").glob("*.png")))
    assert all(i["ok"] and i["w"] > 100 for i in images), images
    assert shot.read_bytes().startswith(PNG)
