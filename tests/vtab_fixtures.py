"""Prepared-looking tfds folders for the VTAB tests, written by tfds itself (no TensorFlow).

`write_metadata` writes each dataset's real dataset_info.json (features from tfds' code,
split sizes chosen by the test) and empty ArrayRecord shard files: enough for the loader's
checks, while `tfds.testing.mock_data` serves the examples. `prepare_fake` runs tfds'
own download_and_prepare on synthetic examples, so the real ArrayRecord path is exercised.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from PIL import Image

from head2toe.tasks.vtab import Dataset


def write_metadata(ds: Dataset, where: Path, counts: dict[str, int]) -> Path:
    import tensorflow_datasets as tfds
    from tensorflow_datasets.core import splits as splits_lib

    builder = tfds.builder(f"{ds.path}:{ds.version}", data_dir=str(where), file_format="array_record")
    infos = [splits_lib.SplitInfo(name=s, shard_lengths=[n], num_bytes=0, filename_template=None) for s, n in counts.items()]
    builder.info.set_splits(splits_lib.SplitDict(infos))
    root = Path(builder.data_dir)
    root.mkdir(parents=True, exist_ok=True)
    builder.info.write_to_directory(str(root))
    for split in counts:
        (root / f"{ds.name}-{split}.array_record-00000-of-00001").touch()
    return root


def png(image: np.ndarray) -> io.BytesIO:
    """Encoded bytes for tfds' Image feature (encoding arrays would need TensorFlow)."""
    buf = io.BytesIO()
    Image.fromarray(image.squeeze(-1) if image.shape[-1] == 1 else image).save(buf, format="PNG")
    buf.seek(0)
    return buf


def prepare_fake(ds: Dataset, where: Path, splits: dict[str, Callable[[], Iterator[tuple[str, dict]]]]) -> None:
    """tfds download_and_prepare (ArrayRecord) of `ds` with synthetic examples per split."""
    import tensorflow_datasets as tfds

    base = tfds.builder_cls(ds.name)

    class Fake(base, skip_registration=True):
        name = ds.name

        def _split_generators(self, dl_manager):
            return {s: gen() for s, gen in splits.items()}

    kwargs = {"config": ds.config} if ds.config else {}
    builder = Fake(data_dir=str(where), version=ds.version, file_format="array_record", **kwargs)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(try_download_gcs=False))
