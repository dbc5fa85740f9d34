"""`imagefolder:PATH`: a user's own images in torchvision's ImageFolder layout.

PATH/train/<class>/* and PATH/test/<class>/*; classes are the sorted folder names of
train. Everything is checked before any compute: a bad folder costs seconds, not a
backbone pass.
"""
from __future__ import annotations

import hashlib
from functools import cached_property
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from head2toe.errors import H2TError
from head2toe.tasks.base import SPLITS, ImageSplit, Task

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm"}


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
            return np.asarray(im.convert("RGB"))


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
            files = self._files[split]
            if not files:
                raise H2TError(f"imagefolder {str(self.root / split)!r} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
            extra = sorted({p.parent.name for p, _ in files} - set(classes))
            if extra:
                raise H2TError(f"imagefolder test/ has classes not in train/: {extra}; add them to train/ or remove them")
            for path, _ in files:
                try:
                    with Image.open(path) as im:
                        im.verify()
                except (UnidentifiedImageError, OSError, SyntaxError) as e:
                    raise H2TError(f"unreadable image {str(path)!r} ({type(e).__name__}); remove or replace it") from None

    @cached_property
    def classes(self) -> list[str]:
        return sorted(p.name for p in (self.root / "train").iterdir() if p.is_dir())

    @property
    def num_classes(self) -> int:  # type: ignore[override]
        return len(self.classes)

    @cached_property
    def _files(self) -> dict[str, list[tuple[Path, int]]]:
        index = {c: i for i, c in enumerate(self.classes)}
        out = {}
        for split in SPLITS:
            out[split] = [
                (p, index.get(p.parent.name, -1))
                for p in sorted((self.root / split).glob("*/*"))
                if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
            ]
        return out

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
