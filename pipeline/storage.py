"""Filesystems behind URIs: local paths, s3://, gs://, memory:// and any other fsspec protocol, one code path.

Credentials come from the standard chains of each filesystem (for S3: environment, profile, instance role);
`storage_options` carries non-secret settings such as an S3-compatible `endpoint_url`. Object-store writes are
single PUTs, which are atomic; local writes go to a temporary name and are renamed, so a reader never sees half a file
(temporaries a killed writer left are removed when the file is next written).
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import time
import uuid
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

logger = logging.getLogger(__name__)

STALE_TMP_S = 3600.0  # a temporary file this old next to its target was left by a killed writer


def resolve(uri: str, storage_options: dict[str, Any] | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """URI -> (filesystem, path inside it). `s3://b/k` -> (S3FileSystem, "b/k"); `/x` -> (LocalFileSystem, "/x")."""
    fs, path = fsspec.core.url_to_fs(uri, **fs_options(uri, storage_options))
    return fs, path


def fs_options(uri: str, storage_options: dict[str, Any] | None) -> dict[str, Any]:
    """Options for the URI's filesystem; `endpoint_url` is placed where s3fs expects it."""
    options = dict(storage_options or {})
    if uri.startswith(("s3://", "s3a://")):
        endpoint = options.pop("endpoint_url", None) or os.environ.get("AWS_ENDPOINT_URL_S3") \
            or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:
            options.setdefault("client_kwargs", {})["endpoint_url"] = endpoint
    return options


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    return isinstance(fs, LocalFileSystem)


def join(base: str, *parts: str) -> str:
    """Join URI or path parts with '/', keeping the protocol of `base`."""
    return "/".join([base.rstrip("/")] + [p.strip("/") for p in parts if p])


def missing_bucket(fs: fsspec.AbstractFileSystem, path: str) -> str | None:
    """The bucket of `path` when the filesystem has buckets (s3, gcs, azure) and that one cannot be seen, else None.

    Object stores create prefixes on write but never buckets, so a missing bucket is worth naming before any work.
    """
    if is_local(fs) or not hasattr(fs, "split_path"):
        return None
    bucket = fs.split_path(path)[0]
    return bucket if bucket and not fs.exists(bucket) else None


def full_uri(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """Path inside `fs` -> a URI that `resolve` turns back into the same file (local paths stay plain)."""
    return os.path.abspath(path) if is_local(fs) else fs.unstrip_protocol(path)


def write_bytes_atomic(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> None:
    """Write a whole file so that readers see either nothing or all of it."""
    if is_local(fs):
        directory = os.path.dirname(path)
        os.makedirs(directory, exist_ok=True)
        tmp = os.path.join(directory, f".{os.path.basename(path)}.{uuid.uuid4().hex}.tmp")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        remove_stale_temporaries(path)
    else:
        fs.pipe_file(path, data)  # one PUT: atomic on object stores; no directory markers


def remove_stale_temporaries(path: str, older_than_s: float = STALE_TMP_S) -> None:
    """Delete `.name.*.tmp` files that a killed writer of `path` left behind (a file that was written in the
    last `older_than_s` seconds may belong to a writer that is still running, and stays)."""
    directory, name = os.path.split(path)
    now = time.time()
    for leftover in glob.glob(os.path.join(glob.escape(directory), f".{glob.escape(name)}.*.tmp")):
        with contextlib.suppress(FileNotFoundError):
            if now - os.path.getmtime(leftover) > older_than_s:
                os.remove(leftover)
                logger.info("removed %s, left by an interrupted write", leftover)


def write_parquet_atomic(fs: fsspec.AbstractFileSystem, path: str, table: pa.Table) -> int:
    """One Parquet file written atomically (see `write_bytes_atomic`); returns its size in bytes."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    data = sink.getvalue().to_pybytes()
    write_bytes_atomic(fs, path, data)
    logger.debug("wrote %d rows to %s", table.num_rows, path)
    return len(data)
