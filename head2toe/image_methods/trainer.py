"""Fine-tuning loop (SGD or Adam, by recipe) with gradient accumulation, bf16 autocast on CUDA, warmup + cosine
lr, and checkpoints a pre-empted run resumes from.

A checkpoint is a dict of tensors and primitives (model, optimiser, step, RNG states, last
loss, and the trial's identity as JSON) written atomically with `torch.save` and read with
`torch.load(weights_only=True)`: loading never runs pickled code. Mini-batches and
augmentation are functions of (seed, step), so resuming at step t replays exactly the rest
of an uninterrupted run.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from head2toe.errors import H2TError
from head2toe.image_methods.config import ADAM_EPS, TrainConfig
from head2toe.image_methods.data import apply_thetas, augment_thetas, normalise, step_indices
from head2toe.image_methods.models import set_bn_mode

CHECKPOINT_FILE = "checkpoint.pt"
OnCheckpoint = Callable[[int, Path, float], None]


def lr_at(step: int, steps: int, base_lr: float, warmup_fraction: float) -> float:
    """Linear warmup over the first `warmup_fraction` of steps, then cosine decay to 0."""
    warm = int(steps * warmup_fraction)
    if step < warm:
        return base_lr * (step + 1) / warm
    progress = (step - warm) / max(1, steps - warm)
    return base_lr * 0.5 * (1 + math.cos(math.pi * progress))


def make_optimizer(params, lr: float, cfg: TrainConfig) -> torch.optim.Optimizer:
    """SGD with momentum (vtab recipe) or Adam with Keras' constants (reference recipe)."""
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999), eps=ADAM_EPS, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def autocast(device: torch.device, enabled: bool):
    """bf16 autocast on CUDA (no loss scaling needed); plain fp32 elsewhere."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


class Checkpointer:
    """One checkpoint file per trial directory, replaced atomically every `every` steps."""

    def __init__(self, directory: str | Path, identity: dict, every: int, on_save: OnCheckpoint | None = None):
        self.directory = Path(directory)
        self.identity = json.dumps(identity, sort_keys=True, default=str)
        self.every = every
        self.on_save = on_save

    @property
    def path(self) -> Path:
        return self.directory / CHECKPOINT_FILE

    def load(self) -> dict | None:
        if not self.path.is_file():
            return None
        state = torch.load(self.path, map_location="cpu", weights_only=True)
        if state.get("identity") != self.identity:
            raise H2TError(f"checkpoint {self.path} belongs to another trial; use an empty --checkpoint-dir per trial")
        return state

    def save(self, state: dict) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(CHECKPOINT_FILE + ".tmp")
        torch.save({**state, "identity": self.identity}, tmp)
        os.replace(tmp, self.path)
        if self.on_save is not None:
            self.on_save(int(state["step"]), self.directory, float(state["train_loss"]))


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass
class TrainOutcome:
    train_loss: float
    start_step: int  # 0, or the step a checkpoint resumed from
    images_forwarded: int


def train(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    lr: float,
    steps: int,
    seed: int,
    cfg: TrainConfig,
    bn_mode: str,
    augment_policy: str,
    mean,
    std,
    checkpointer: Checkpointer | None = None,
    resume: dict | None = None,
    extra: dict | None = None,
) -> TrainOutcome:
    """Train `model` in place on uint8 `images` (on the model's device) and `labels`.

    One step = one effective batch of `cfg.batch_size` (at most all rows), accumulated over
    micro-batches. `resume`: a state from `checkpointer.load()` to continue from. `extra`
    (tensors/primitives) is stored in every checkpoint beside the weights.
    """
    device = images.device
    n = len(labels)
    b = min(cfg.batch_size, n)
    micro = cfg.micro_batch or (b if device.type == "cuda" else 32)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = make_optimizer(params, lr, cfg)
    start, last_loss = 0, float("nan")
    if resume is not None:
        model.load_state_dict(resume["model"])
        opt.load_state_dict(resume["optimizer"])
        _set_rng_state(resume["rng"])
        start, last_loss = int(resume["step"]), float(resume["train_loss"])
    set_bn_mode(model, bn_mode)
    forwarded, last = 0, None
    for t in range(start, steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(t, steps, lr, cfg.warmup_fraction)
        idx = step_indices(n, b, seed, t).to(device)
        opt.zero_grad(set_to_none=True)
        total = torch.zeros((), device=device)
        thetas = augment_thetas(len(idx), augment_policy, seed, t)
        for c, chunk in enumerate(idx.split(micro)):
            part = None if thetas is None else thetas[c * micro : c * micro + len(chunk)]
            x = apply_thetas(normalise(images[chunk], mean, std), part)
            with autocast(device, cfg.amp):
                logits = model(x)
            loss = F.cross_entropy(logits.float(), labels[chunk]) * (len(chunk) / len(idx))
            loss.backward()
            total += loss.detach()
            forwarded += len(chunk)
        opt.step()
        last = total  # a tensor: no device sync per step
        if checkpointer is not None and ((t + 1) % checkpointer.every == 0 or t + 1 == steps):
            checkpointer.save({"step": t + 1, "model": model.state_dict(), "optimizer": opt.state_dict(),
                               "rng": _rng_state(), "train_loss": float(last), "extra": extra or {}})
    return TrainOutcome(float(last) if last is not None else last_loss, start, forwarded)


@torch.inference_mode()
def predict(model: nn.Module, images: torch.Tensor, mean, std, batch: int, amp: bool) -> torch.Tensor:
    """Class predictions for uint8 images, eval mode (BatchNorm on running statistics)."""
    model.eval()
    out = []
    for start in range(0, len(images), batch):
        x = normalise(images[start : start + batch], mean, std)
        with autocast(images.device, amp):
            out.append(model(x).argmax(dim=1))
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long, device=images.device)
