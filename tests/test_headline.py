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
