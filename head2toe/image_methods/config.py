"""What an image-level trial is: its grid point (`ImageHParams`) and the fixed protocol
settings around it (`TrainConfig`), plus the default grids.

The grid point is what a sweep varies and hashes into a trial key; the protocol settings
are a fine-tuning recipe ("vtab" or "reference"), the same for every trial of a sweep.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Mapping

from head2toe.errors import H2TError
from head2toe.hparams import check_point
from head2toe.registry import Registry


@dataclass(frozen=True)
class ImageMethod:
    """A method that trains the backbone itself, so it reads images, not the feature cache;
    `head2toe.image_methods.run_image_method` runs it by name."""

    name: str
    description: str = ""


IMAGE_METHODS: Registry[ImageMethod] = Registry("image method")
for _m in [
    ImageMethod("finetune", "pretrained backbone + new linear head, all weights trained"),
    ImageMethod("scratch", "same network from a random init"),
    ImageMethod("head2toe_ft", "Head2Toe-selected features as the head's input, backbone trained end to end"),
]:
    IMAGE_METHODS.register(_m.name, _m)
METHOD_NAMES = tuple(IMAGE_METHODS)
BN_MODES = ("train", "frozen")


@dataclass(frozen=True)
class ImageHParams:
    """One grid point. `coef`, `target_size`, `keep_fraction` drive head2toe_ft's selection
    (group-lasso coefficient, pooled features per layer, fraction kept); finetune and
    scratch take only `lr` and `steps`."""

    lr: float
    steps: int
    coef: float = 0.0
    target_size: int | None = None
    keep_fraction: float | None = None

    def __post_init__(self) -> None:
        check_point(self.lr, self.steps, self.coef, self.target_size, () if self.keep_fraction is None else (self.keep_fraction,))

    @classmethod
    def from_any(cls, hp: "ImageHParams | Mapping") -> "ImageHParams":
        """From itself or a dict (a Tune config); unknown keys are a user error."""
        if isinstance(hp, ImageHParams):
            return hp
        known = {f.name for f in fields(cls)}
        extra = sorted(set(hp) - known)
        if extra:
            raise H2TError(f"unknown image-method hyper-parameter(s) {extra}; accepted: {sorted(known)}")
        return cls(**{k: v for k, v in hp.items() if v is not None})

    def check_for(self, method: str) -> None:
        selection = {"coef": self.coef or None, "target_size": self.target_size, "keep_fraction": self.keep_fraction}
        if method == "head2toe_ft" and None in selection.values():
            raise H2TError(f"head2toe_ft needs coef > 0, target_size and keep_fraction; got {self.as_dict()}")
        given = [k for k, v in selection.items() if v is not None]
        if method != "head2toe_ft" and given:
            raise H2TError(f"{method} takes only lr and steps; {', '.join(given)} apply to head2toe_ft")

    def as_dict(self) -> dict:
        return asdict(self)


OPTIMIZERS = ("sgd", "adam")
HEAD_INITS = ("zeros", "glorot")
# The two fine-tuning recipes (docs/paper_setup.md): what each sets when a field is left at None.
#   vtab: task_adaptation's recipe (SGD momentum 0.9, batch 512, warmup + cosine, the task's
#         crop/flip augmentation, zero-initialised head, head2toe_ft selecting with select_lr/steps).
#   reference: google-research/head2toe with finetune_backbones=True: its probe loop with the
#         backbone unfrozen (Adam eps 1e-7, cosine without warmup, batch 128, no augmentation,
#         BatchNorm in train mode, Glorot-uniform head, head2toe_ft selecting at the trial's lr/steps).
RECIPES: dict[str, dict] = {
    "vtab": {"optimizer": "sgd", "batch_size": 512, "warmup_fraction": 0.1, "augment": None, "bn": None,
             "head_init": "zeros", "select_at_trial_hp": False},
    "reference": {"optimizer": "adam", "batch_size": 128, "warmup_fraction": 0.0, "augment": "none", "bn": "train",
                  "head_init": "glorot", "select_at_trial_hp": True},
}
ADAM_EPS = 1e-7  # Keras' default, the reference's optimizer


@dataclass(frozen=True)
class TrainConfig:
    """The fine-tuning recipe. `recipe` ("vtab" or "reference", see RECIPES) fills every
    field left at None; a field given explicitly wins.

    `micro_batch` splits each step into accumulated chunks (None: the whole batch on CUDA,
    32 on CPU). `warmup_fraction` of the steps ramps the lr linearly, then cosine decay to 0.
    `augment`: None picks the task's policy (see augment.policy_for); `bn`: None picks the
    method's BatchNorm mode (see run.BN_DEFAULT). `select_lr`/`select_steps` train
    head2toe_ft's group-lasso probe unless `select_at_trial_hp` (then the trial's own lr and
    steps do). `checkpoint_every`: steps between checkpoints.
    """

    recipe: str = "vtab"
    optimizer: str | None = None
    batch_size: int | None = None
    micro_batch: int | None = None
    momentum: float = 0.9
    weight_decay: float = 0.0
    warmup_fraction: float | None = None
    augment: str | None = None
    bn: str | None = None
    head_init: str | None = None
    eval_batch: int = 256
    amp: bool = True
    select_lr: float = 0.1
    select_steps: int = 500
    select_at_trial_hp: bool | None = None
    checkpoint_every: int = 500

    def __post_init__(self) -> None:
        if self.recipe not in RECIPES:
            raise H2TError(f"recipe must be one of {tuple(RECIPES)}, got {self.recipe!r}")
        for name, value in RECIPES[self.recipe].items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)
        for name in ("batch_size", "eval_batch", "select_steps", "checkpoint_every"):
            if getattr(self, name) <= 0:
                raise H2TError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if self.micro_batch is not None and self.micro_batch <= 0:
            raise H2TError(f"micro_batch must be > 0, got {self.micro_batch!r}")
        if not 0 <= self.warmup_fraction < 1:
            raise H2TError(f"warmup_fraction must be in [0, 1), got {self.warmup_fraction!r}")
        if self.bn is not None and self.bn not in BN_MODES:
            raise H2TError(f"bn must be one of {BN_MODES}, got {self.bn!r}")
        if self.optimizer not in OPTIMIZERS:
            raise H2TError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.head_init not in HEAD_INITS:
            raise H2TError(f"head_init must be one of {HEAD_INITS}, got {self.head_init!r}")

    def as_dict(self) -> dict:
        return asdict(self)


# VTAB's lightweight fine-tuning sweep (Zhai et al. 2019): 2 learning rates x 2 schedules.
VTAB_FT_GRID: dict[str, list] = {"lr": [0.1, 0.01], "steps": [2500, 10000]}
# head2toe_ft adds the selection: Head2Toe's 2 coefficients, a target size and keep fraction.
VTAB_H2T_FT_GRID: dict[str, list] = {**VTAB_FT_GRID, "coef": [1e-4, 1e-3], "target_size": [1024], "keep_fraction": [0.05]}

# Small grids for `h2t run` (CV over these unless flags fix them).
DEFAULT_IMAGE_GRIDS: dict[str, dict[str, list]] = {
    "finetune": {"lr": [0.01, 0.001], "steps": [500]},
    "scratch": {"lr": [0.1, 0.01], "steps": [500]},
    "head2toe_ft": {"lr": [0.01, 0.001], "steps": [500], "coef": [1e-4], "target_size": [512], "keep_fraction": [0.05]},
}
