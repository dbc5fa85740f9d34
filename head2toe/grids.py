"""Default hyper-parameter grids: small ones for `h2t run` on a laptop, and the paper's."""
from __future__ import annotations

# Small CV grid per method (2 lr x 1 steps x 2 coef x 1 target size; 3 keep fractions).
DEFAULT_GRIDS: dict[str, dict[str, list]] = {
    "linear": {"lr": [0.1, 0.01], "steps": [500], "coef": [0.0, 1e-5], "target_size": [512]},
    "all_l2": {"lr": [0.1, 0.01], "steps": [500], "coef": [1e-5, 1e-4], "target_size": [512]},
    "all_l1": {"lr": [0.1, 0.01], "steps": [500], "coef": [1e-6, 1e-5], "target_size": [512]},
    "all_group": {"lr": [0.1, 0.01], "steps": [500], "coef": [1e-5, 1e-4], "target_size": [512]},
    "head2toe": {"lr": [0.1, 0.01], "steps": [500], "coef": [1e-4, 1e-3], "target_size": [512], "keep_fractions": [0.01, 0.05, 0.2]},
    "head2toe_layers": {"lr": [0.1, 0.01], "steps": [500], "coef": [1e-4, 1e-3], "target_size": [512], "keep_fractions": [0.05, 0.2, 0.5]},
}

# The paper's grid shape: 2 lr x 2 steps x 3 coefs (2 for Head2Toe) x 3 target sizes.
PAPER_TARGET_SIZES = [512, 8192, 16384]  # as configs/paper_*.yaml
