"""The paper's central claim on the embedded default, small enough for the test suite:
intermediate features with group-lasso selection beat the last layer on a far-transfer task."""
import json
import subprocess
import sys


def run(*args: str) -> dict:
    cmd = [sys.executable, "-m", "jobs.cli", "run", "--task", "synth_dsprites_loc", "--input-size", "112", "--json", *args]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=True)
    return json.loads(out.stdout)


def test_head2toe_beats_linear_by_15_points_on_dsprites_location():
    linear = run("--method", "linear", "--lr", "0.1", "--steps", "500", "--coef", "0", "--target-size", "512")
    h2t = run("--method", "head2toe", "--lr", "0.1", "--steps", "500", "--coef", "1e-4", "--target-size", "512", "--keep-fraction", "0.05")
    assert h2t["forward_passes"] == 0  # the second run read the features the first one cached
    assert h2t["n_features_kept"] == int(0.05 * h2t["n_features_total"])
    assert h2t["test_accuracy"] - linear["test_accuracy"] >= 0.15, (linear["test_accuracy"], h2t["test_accuracy"])


def test_demo_config_runs_the_whole_paper_in_miniature(tmp_path):
    """configs/demo.yaml feeds every report section: the paper's rows, the layers-vs-features
    ablation at Head2Toe's own keep fractions, two target sizes, and our own Scratch (at a
    resolution of its own) for domain affinity."""
    from pathlib import Path

    import pytest

    from head2toe.errors import H2TError
    from orchestrator.config import load_config

    demo = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"
    cfg = load_config(demo)
    assert {"linear", "all_group", "head2toe", "head2toe_layers", "scratch"} <= set(cfg.methods)
    grids = cfg.feature_grids()
    assert grids["head2toe_layers"].keep_fractions == grids["head2toe"].keep_fractions
    assert len(grids["head2toe"].target_size) >= 2 and len(cfg.folds) >= 2
    (bb,) = cfg.backbones
    assert bb.image_input_size < bb.input_size  # Scratch trains from pixels: affordable only small
    assert cfg.expected["synth_dsprites_loc"]["head2toe_minus_linear_at_least"] == 15
    # head2toe_ft trains on columns selected at input_size: a resolution of its own is refused
    bad = tmp_path / "ft.yaml"
    bad.write_text(demo.read_text().replace("scratch:", "head2toe_ft: {lr: [0.01], steps: [5], coef: [1.0e-4], "
                                                        "target_size: [512], keep_fraction: [0.05]}\n  scratch:"))
    with pytest.raises(H2TError, match="head2toe_ft trains on the features it selected"):
        load_config(bad)
