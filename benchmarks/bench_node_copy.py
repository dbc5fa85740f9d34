"""One copy per node: reading an entry in place vs a node-local copy, local and on S3.

Three "trials" read the same ~190 MiB entry through `orchestrator.node_cache.reader`, per
policy (`H2T_NODE_COPY`): a local folder read in place or copied, S3 (moto's server on
loopback) read through Arrow by every trial or copied once per node. Prints seconds per read.

    .venv/bin/python benchmarks/bench_node_copy.py
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time

import numpy as np


def main() -> None:
    import boto3
    from moto.server import ThreadedMotoServer

    from head2toe.cache import open_cache
    from head2toe.features import LayerFeatures
    from orchestrator import node_cache

    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1",
                      AWS_EC2_METADATA_DISABLED="true")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    boto3.client("s3", endpoint_url=f"http://{host}:{port}", region_name="us-east-1").create_bucket(Bucket="h2tbench")
    s3 = f"s3://h2tbench/features?endpoint_override={host}:{port}&scheme=http&region=us-east-1"
    work = tempfile.mkdtemp(prefix="h2t-bench-node-copy-")
    os.environ[node_cache.DIR_ENV] = f"{work}/nodes"
    rng = np.random.default_rng(0)
    feats = LayerFeatures({f"l{i}": rng.normal(size=(1000, 20000)).astype(np.float16) for i in range(5)}, rng.integers(0, 10, 1000))
    out = {"entry_mib": round(sum(b.nbytes for b in feats.layers.values()) / 2**20)}
    try:
        for uri in (f"{work}/local", s3):
            open_cache(uri).save("entry", feats, {"task": "bench"})
        for label, uri, mode in [("local, in place", f"{work}/local", "auto"), ("local, node copy", f"{work}/local", "always"),
                                 ("s3, Arrow in every trial", s3, "never"), ("s3, node copy once", s3, "auto")]:
            os.environ[node_cache.MODE_ENV] = mode
            times = []
            for _ in range(3):
                start = time.perf_counter()
                assert node_cache.reader(uri, "entry").load("entry") is not None
                times.append(round(time.perf_counter() - start, 2))
            out[label] = times
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({"seconds_per_trial_read": out}))


if __name__ == "__main__":
    main()
