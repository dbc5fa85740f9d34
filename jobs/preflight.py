"""Checks of what a command will touch, run before any forward pass or Ray start.

The device, the feature cache (reachable within seconds, writable, or already holding
everything needed) and the tracking server (answering within seconds) are each checked
where they enter, so a problem that could be seen up front is one line, never a traceback
after minutes of compute.
"""
from __future__ import annotations

import contextlib
import logging
import threading
import urllib.error
import urllib.request
import uuid
from urllib.parse import parse_qs, urlsplit

import pyarrow as pa
import pyarrow.fs as pafs

from head2toe.cache import FeatureCache, open_cache
from head2toe.errors import H2TError

REMOTE_TIMEOUT_S = 5.0  # a storage or tracking server that has not answered by then is reported, not waited for
_S3_OPTIONS = ("region", "scheme", "endpoint_override", "access_key", "secret_key", "session_token")


def check_device(device: str | None) -> None:
    """`--device`: a name torch knows, and a device this machine has."""
    if device is None:
        return
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise H2TError(f"--device {device!r} is not a device name; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise H2TError(f"--device {device!r}: no CUDA GPU is visible here; use --device cpu, or leave --device out")
        if dev.index is not None and dev.index >= n:
            raise H2TError(f"--device {device!r}: this machine has {n} CUDA GPU(s) (cuda:0..cuda:{n - 1})")
    elif dev.type != "cpu":
        raise H2TError(f"--device {device!r} is not supported; use cpu, cuda or cuda:N")


def _s3_probe(uri: str, timeout: float) -> None:
    """List the bucket prefix with short timeouts and no retries (pyarrow's defaults wait minutes)."""
    parts = urlsplit(uri)
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    opts = {k: query[k] for k in _S3_OPTIONS if k in query}
    if "region" not in opts and "endpoint_override" not in opts:
        opts["region"] = pafs.resolve_s3_region(parts.netloc)
    fs = pafs.S3FileSystem(**opts, connect_timeout=timeout, request_timeout=timeout,
                           retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=1))
    fs.get_file_info(f"{parts.netloc}{parts.path}")


def _gcs_probe(uri: str, timeout: float) -> None:
    """The same for gs:// (pyarrow's default retry limit is 15 minutes)."""
    from datetime import timedelta

    parts = urlsplit(uri)
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    opts = {k: query[k] for k in ("scheme", "endpoint_override") if k in query}
    if query.get("anonymous", "").lower() in ("1", "true"):
        opts["anonymous"] = True
    fs = pafs.GcsFileSystem(**opts, retry_time_limit=timedelta(seconds=timeout))
    fs.get_file_info(f"{parts.netloc}{parts.path}")


def _within(seconds: float, what: str, fix: str, func, *args) -> None:
    """Run func in a daemon thread; an answer that takes longer than `seconds` is an error."""
    errors: list[BaseException] = []

    def call():
        try:
            func(*args)
        except BaseException as e:  # reported below, in the caller's thread
            errors.append(e)

    t = threading.Thread(target=call, daemon=True)
    t.start()
    t.join(seconds)
    if t.is_alive():
        raise H2TError(f"{what}: no answer within {seconds:.0f} s; {fix}")
    if errors:
        e = errors[0]
        raise H2TError(f"{what}: {str(e).splitlines()[0] if str(e) else type(e).__name__}; {fix}") from None


def open_checked_cache(uri: str | None, dtype: str = "float16") -> FeatureCache:
    """The feature cache at `uri`, with a remote one reached within seconds (or one line saying why not)."""
    probe = {"s3://": _s3_probe, "gs://": _gcs_probe}.get((uri or "")[:5])
    if probe is not None:
        _within(3 * REMOTE_TIMEOUT_S, f"cannot reach feature cache {uri!r}",
                "check the network, bucket, endpoint and credentials, or pass --cache with a local folder", probe, uri, REMOTE_TIMEOUT_S)
    try:
        return open_cache(uri, dtype=dtype)
    except (OSError, pa.ArrowException) as e:
        raise H2TError(f"cannot open feature cache {uri!r}: {str(e).splitlines()[0]}; pass --cache with a reachable folder or bucket") from None


def write_problem(cache: FeatureCache) -> str | None:
    """Why nothing can be written to the cache (None when a small probe file can be written and removed)."""
    probe = f"{cache.root}/.h2t-write-check-{uuid.uuid4().hex}"
    try:
        with cache.fs.open_output_stream(probe) as f:
            f.write(b"h2t")
        cache.fs.delete_file(probe)
    except (OSError, pa.ArrowException) as e:
        return f"{type(e).__name__}: {str(e).splitlines()[0]}"
    return None


@contextlib.contextmanager
def quiet_cache_log():
    """The refusal line names the damaged file itself; the cache's own warning would be a second line."""
    log = logging.getLogger("head2toe.cache")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def require_writable_or_cached(cache: FeatureCache, keys: list[str], verify_data: bool = True) -> None:
    """A cache that cannot be written must already hold every needed file, valid (every digest
    with `verify_data`, else footers: damaged bytes are then caught where they are read);
    else stop now, before forward passes whose results could not be saved."""
    problem = write_problem(cache)
    if problem is None:
        return
    with quiet_cache_log():
        missing = [k for k in keys if not cache.contains(k, verify_data=verify_data)]
    if missing:
        damaged = {p for p, _ in cache.rejected}
        first = cache.path(missing[0])
        state = "damaged" if first in damaged else "missing"
        raise H2TError(f"feature cache {cache.uri} is not writable ({problem}) and {len(missing)} of {len(keys)} needed "
                       f"feature file(s) must be written ({first} is {state}); pass --cache with a writable folder or bucket, "
                       "or make this one writable")


def check_tracking_uri(uri: str | None, timeout: float = REMOTE_TIMEOUT_S) -> None:
    """An http(s) tracking server must answer (any HTTP status) within `timeout` seconds."""
    if not uri or not uri.startswith(("http://", "https://")):
        return
    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout).close()
    except urllib.error.HTTPError:
        return  # it answered
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise H2TError(f"tracking server {uri} did not answer within {timeout:.0f} s ({reason}); start it "
                       "(mlflow server --host 127.0.0.1 --port PORT), fix --tracking-uri / tracking_uri, "
                       "or leave it out to log to OUT/mlflow.db") from None
