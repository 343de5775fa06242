"""Read stage: list the videos of an archive (local folder, s3://bucket/prefix, any fsspec URI) as references.

A reference is a small dict (uri, size, version, source, video_id): the bytes are read later by the decode actors,
so listing a large archive costs one directory walk, and the Ray dataset holds rows of a few hundred bytes.
"""

from __future__ import annotations

import hashlib
import logging
import posixpath
import re
from typing import Any

from pipeline.storage import full_uri, missing_bucket, resolve

logger = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v", ".mpg", ".mpeg")


class InputError(ValueError):
    """The input URI does not exist or holds no videos."""


def sanitize(name: str) -> str:
    """A string safe as a file name and a hive partition value."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "_"


def make_video_id(uri: str) -> str:
    """Readable and unique: the file stem plus a hash of the full URI."""
    stem = posixpath.splitext(posixpath.basename(uri.rstrip("/")))[0]
    return f"{sanitize(stem)[:48]}-{hashlib.sha1(uri.encode()).hexdigest()[:10]}"


def file_version(info: dict[str, Any]) -> str:
    """What changes when the object changes: an ETag on object stores, else mtime (plus size, kept separately)."""
    for key in ("ETag", "etag", "md5Hash", "mtime", "LastModified", "last_modified", "created"):
        if info.get(key) is not None:
            value = info[key]
            return str(value.timestamp() if hasattr(value, "timestamp") else value).strip('"')
    return ""


def list_videos(input_uri: str, storage_options: dict[str, Any] | None = None,
                extensions: tuple[str, ...] = VIDEO_EXTENSIONS) -> list[dict[str, Any]]:
    """All videos under `input_uri` (or the one video it names), sorted by URI.

    `source` is the first folder below the input root (e.g. the camera), or the root's own name for files directly
    in it; it becomes a hive partition value.
    """
    fs, root = resolve(input_uri, storage_options)
    if not fs.exists(root):
        bucket = missing_bucket(fs, root)
        why = f" (its bucket {bucket!r} is missing or these credentials cannot see it)" if bucket else ""
        raise InputError(f"input {input_uri!r} does not exist{why}: give a folder or video file path, or a URI such "
                         f"as s3://bucket/prefix")
    root = root.rstrip("/")
    if fs.isfile(root):
        infos = {root: fs.info(root)}
        root = posixpath.dirname(root)
    else:
        infos = fs.find(root, detail=True)
    refs, renamed = [], {}
    for path, info in sorted(infos.items()):
        # FIFOs and dangling links ("other") are listed too: they get an error row instead of vanishing
        if info.get("type") == "directory" or not path.lower().endswith(extensions):
            continue
        if posixpath.basename(path).startswith("."):
            continue  # hidden and temporary files
        relative = posixpath.relpath(path, root) if path.startswith(root + "/") else posixpath.basename(path)
        parts = relative.split("/")
        source = parts[0] if len(parts) > 1 else (posixpath.basename(root) or "root")
        uri = full_uri(fs, path)
        if sanitize(source) != source:
            renamed[source] = sanitize(source)
        refs.append({
            "uri": uri,
            "video_id": make_video_id(uri),
            "source": sanitize(source),
            "size": int(info.get("size") or 0),
            "version": file_version(info),
        })
    for folder, name in renamed.items():  # a partition value must be a plain name in every engine
        logger.warning("source folder %r is written as source=%s (letters, digits, '.', '_' and '-' are kept; the "
                       "uri column keeps the real path)", folder, name)
    logger.info("listed %d videos under %s", len(refs), input_uri)
    return refs
