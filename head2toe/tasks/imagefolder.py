"""`imagefolder:PATH`: a user's own images in torchvision's ImageFolder layout.

PATH/train/<class>/** and PATH/test/<class>/**. As in torchvision's `ImageFolder`
(`find_classes`, `make_dataset`): classes are the sorted folder names of train, images
are found recursively under each class folder (symlinks followed), and a class folder
without images is an error (torchvision's default `allow_empty=False`), named here. One
difference: entries whose name starts with "." (`.ipynb_checkpoints`, `.DS_Store`,
`.thumbnails`) are skipped, where torchvision would count a hidden folder as a class.
Everything is checked before any compute, every image decoded (head2toe.tasks.image_check):
a bad folder costs seconds, not a backbone pass.
"""
from __future__ import annotations

import hashlib
import os
from functools import cached_property
from pathlib import Path

import numpy as np
from PIL import Image

from head2toe.errors import H2TError
from head2toe.tasks.base import SPLITS, ImageSplit, Task
from head2toe.tasks.image_check import check_images, to_rgb8

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


def _visible(name: str) -> bool:
    return not name.startswith(".")


def images_under(folder: Path) -> list[Path]:
    """Image files anywhere below `folder`, hidden entries skipped, symlinks followed."""
    out = []
    for root, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = [d for d in dirs if _visible(d)]
        out += [Path(root) / f for f in files if _visible(f) and Path(f).suffix.lower() in IMAGE_SUFFIXES]
    return out


class LazyImages:
    """Decode on access, so a large folder is not held in memory twice."""

    def __init__(self, paths: list[Path]):
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        with Image.open(self.paths[i]) as im:
            return to_rgb8(im)


class ImageFolderTask(Task):
    source = "imagefolder"
    group = "Custom"

    def __init__(self, root: str):
        self.root = Path(root).expanduser()
        self.name = f"imagefolder:{root}"
        self.description = f"images under {self.root}"
        self._validate()

    def _validate(self) -> None:
        if not self.root.is_dir():
            raise H2TError(f"imagefolder path {str(self.root)!r} does not exist; expected PATH/train/<class>/* and PATH/test/<class>/*")
        for split in SPLITS:
            if not (self.root / split).is_dir():
                raise H2TError(f"imagefolder {str(self.root)!r} has no {split}/ folder; expected PATH/{split}/<class>/*")
        classes = self.classes
        if len(classes) < 2:
            raise H2TError(f"imagefolder {str(self.root / 'train')!r} has {len(classes)} class folder(s); a classifier needs at least 2")
        for split in SPLITS:
            by_class = self._by_class[split]
            if not any(by_class.values()):
                raise H2TError(f"imagefolder {str(self.root / split)!r} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
            extra = sorted(set(by_class) - set(classes))
            if extra:
                raise H2TError(f"imagefolder test/ has classes not in train/: {extra}; add them to train/ or remove them")
            empty = sorted(c for c, files in by_class.items() if not files)
            if empty:
                raise H2TError(f"imagefolder {str(self.root / split)!r}: class folder(s) {empty} hold no images "
                               f"({', '.join(sorted(IMAGE_SUFFIXES))}); add images or remove the folder(s)")
        check_images([p for split in SPLITS for p, _ in self._files[split]])

    @cached_property
    def classes(self) -> list[str]:
        return sorted(p.name for p in (self.root / "train").iterdir() if p.is_dir() and _visible(p.name))

    @property
    def num_classes(self) -> int:  # type: ignore[override]
        return len(self.classes)

    @cached_property
    def _by_class(self) -> dict[str, dict[str, list[Path]]]:
        """split -> class folder name -> its images (recursive)."""
        return {split: {d.name: images_under(d) for d in sorted((self.root / split).iterdir()) if d.is_dir() and _visible(d.name)}
                for split in SPLITS}

    @cached_property
    def _files(self) -> dict[str, list[tuple[Path, int]]]:
        index = {c: i for i, c in enumerate(self.classes)}
        return {split: sorted((p, index.get(c, -1)) for c, paths in self._by_class[split].items() for p in paths)
                for split in SPLITS}

    def split_sizes(self) -> dict[str, int]:
        return {s: len(self._files[s]) for s in SPLITS}

    def definition(self) -> dict:
        h = hashlib.sha256()
        for split in SPLITS:
            for p, label in self._files[split]:
                st = p.stat()
                h.update(f"{split}|{p.relative_to(self.root)}|{label}|{st.st_size}|{st.st_mtime_ns}".encode())
        return {**super().definition(), "root": str(self.root.resolve()), "classes": self.classes, "files": h.hexdigest()[:16]}

    def load(self, split: str) -> ImageSplit:
        self._check_split(split)
        files = self._files[split]
        # train order interleaves classes deterministically so CV folds are not single-class blocks
        if split == "train":
            order = np.random.default_rng(0).permutation(len(files))
            files = [files[i] for i in order]
        return ImageSplit(LazyImages([p for p, _ in files]), np.array([label for _, label in files]))
