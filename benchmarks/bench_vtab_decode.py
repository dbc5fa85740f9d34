"""VTAB decode + resize throughput through the real ArrayRecord path (images/s).

Prepares two small tfds datasets with VTAB-like encodings (tfds' own download_and_prepare,
synthetic pixels): JPEG 500x375 (Caltech/SUN-like) and PNG 480x320 (CLEVR-like). Then
reads 32-image batches the way extraction does (decode only, then `images[s:s+32]` -> `to_input(..., 224)`),
once one image at a time on one thread, once through the task's lazy sequence (thread-pool
decode with read-ahead). Within one run, so the ratio holds on a noisy machine.

Run: `.venv/bin/python benchmarks/bench_vtab_decode.py [--n 512] [--threads N]`.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
from vtab_fixtures import prepare_fake  # noqa: E402

from head2toe.preprocess import to_input  # noqa: E402
from head2toe.tasks.vtab import SPECS, vtab_task  # noqa: E402


def picture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Smooth gradients plus noise: compresses and decodes like a photo, unlike pure noise."""
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    base = np.stack([np.sin(6 * x + rng.uniform(0, 6)), np.cos(5 * y + rng.uniform(0, 6)), x * y], -1)
    return np.clip(127 + 100 * base + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8)


def encoded(image: np.ndarray, fmt: str) -> io.BytesIO:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format=fmt, quality=90)
    buf.seek(0)
    return buf


def make(where: Path, n: int, fmt: str, h: int, w: int) -> None:
    def split(count: int, seed: int):
        def gen():
            rng = np.random.default_rng(seed)
            for i in range(count):
                yield f"{seed}-{i}", {"image": encoded(picture(rng, h, w), fmt), "label": i % 47, "file_name": f"{i}"}
        return gen

    prepare_fake(SPECS["dtd"].dataset, where, {"train": split(1, 0), "validation": split(1, 1), "test": split(n, 2)})


def rate(images, n: int, batch: int = 32) -> float:
    start = time.perf_counter()
    for s in range(0, n, batch):
        to_input(images[s : s + batch], 224, (0.5,) * 3, (0.5,) * 3)
    return n / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=512, help="test images per format")
    p.add_argument("--threads", type=int, default=None, help="decode threads (default: one per core)")
    p.add_argument("--torch-threads", type=int, default=1, help="intra-op threads of the resize (to_input)")
    args = p.parse_args()
    torch.set_num_threads(args.torch_threads)
    if args.threads:
        os.environ["H2T_DECODE_THREADS"] = str(args.threads)
    import tensorflow_datasets as tfds

    out = {"cores": os.cpu_count(), "torch_threads": args.torch_threads}
    for fmt, h, w in [("JPEG", 375, 500), ("PNG", 320, 480)]:
        with tempfile.TemporaryDirectory() as tmp:
            where = Path(tmp)
            make(where, args.n, fmt, h, w)
            task = vtab_task("dtd", where)
            lazy = task.load("test").images
            source = tfds.data_source("dtd:3.0.1", split="test", data_dir=tmp, download=False)

            class Serial:  # one image at a time, one thread
                def __getitem__(self, sl):
                    return [source[i]["image"] for i in range(*sl.indices(len(source)))]

            rate(lazy, 64)  # warm the page cache and the pool
            start = time.perf_counter()
            for s in range(0, args.n, 32):
                lazy[s : s + 32]
            decode_only = args.n / (time.perf_counter() - start)
            serial, parallel = rate(Serial(), args.n), rate(lazy, args.n)
            out[f"{fmt} {w}x{h}"] = {"decode_only_parallel_img_s": round(decode_only, 1), "serial_decode_resize_img_s": round(serial, 1),
                                     "parallel_decode_resize_img_s": round(parallel, 1), "speedup": round(parallel / serial, 2)}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
