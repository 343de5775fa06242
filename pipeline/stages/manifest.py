"""Incremental runs: which videos an output already holds, so a nightly run processes only new or changed ones.

The manifest is one Parquet file, `<output>/_manifest/videos.parquet` (readers of the tables skip `_` folders), with
one row per video ever processed into that output, keyed by `uri`:

    uri, video_id     the video
    size, version     the video's bytes when processed (version: ETag on object stores, else mtime)
    outputs_hash      hash of everything that shapes its rows: sampling, model checkpoint, grouping, tracking
    status            ok | failed (retried by every run) | planned (a run meant to process it, and did not record it)
    paths             the files holding its rows, relative to the output root
    pending           files a run may have written without recording them (planned, then perhaps crashed)
    run_id, processed_at   the run that recorded it

Crash safety comes from the order the driver follows:
  1. `plan` each video to process with every path this run may write for it, then `save` once;
  2. per video: write its files (each atomic), `record` it, `remove` the stale paths `record` returns (its files
     from earlier runs in other date partitions), `maybe_save`;
  3. `save` at the end (a crash before it loses at most `maybe_save`'s interval of records: those videos are redone).
A crash leaves each video either recorded with files that exist, or unrecorded; the rerun redoes only unrecorded
videos, overwrites same-named files, and removes what an earlier attempt left in other partitions (the pending
paths), so no video's rows are ever counted twice. Saves are atomic (one PUT on object stores, a rename locally).
Two runs into one output at the same time are not supported: the last save wins and the other's videos are redone.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import time
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.config import RunConfig
from pipeline.storage import join, missing_bucket, resolve, write_parquet_atomic

logger = logging.getLogger(__name__)

MANIFEST_PATH = "_manifest/videos.parquet"
# + grouping, tracking
OUTPUT_SETTINGS = {"decode": ("every_nth", "fps", "max_frames"), "model": ("precision", "flip_test", "frame_size")}

MANIFEST_SCHEMA = pa.schema([
    pa.field("uri", pa.string(), nullable=False),
    pa.field("video_id", pa.string(), nullable=False),
    pa.field("size", pa.int64(), nullable=False),
    pa.field("version", pa.string(), nullable=False),
    pa.field("outputs_hash", pa.string(), nullable=False),
    pa.field("status", pa.string(), nullable=False),            # ok | failed | planned
    pa.field("paths", pa.list_(pa.string()), nullable=False),
    pa.field("pending", pa.list_(pa.string()), nullable=False),
    pa.field("run_id", pa.string(), nullable=False),
    pa.field("processed_at", pa.timestamp("us", tz="UTC")),
])


class ManifestError(ValueError):
    """The output cannot hold a manifest: its bucket is missing, or the manifest file is unreadable."""


def outputs_hash(config: RunConfig, checkpoint_metadata: dict[str, Any]) -> str:
    """Hash of the settings that change a video's rows, and of the checkpoint's metadata (its identity).

    Unlike `config_hash`, it leaves out what only changes speed or place (workers, batch sizes, the date, input,
    output, Ray), so scaling the cluster does not reprocess the archive while a new checkpoint does.
    """
    data = config.model_dump(mode="json")
    payload = {section: {key: data[section][key] for key in keys} for section, keys in OUTPUT_SETTINGS.items()}
    payload |= {"grouping": data["grouping"], "topdown": data["topdown"], "tracking": data["tracking"],
                "checkpoint": checkpoint_metadata}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


class Manifest:
    """The processed videos of one output root; see the module docstring for the protocol a run follows."""

    def __init__(self, fs, root: str):
        self.fs, self.root = fs, root.rstrip("/")
        self.entries: dict[str, dict[str, Any]] = {}   # uri -> row of MANIFEST_SCHEMA
        self.dirty = False
        self.saved_at = time.monotonic()

    @property
    def path(self) -> str:
        return join(self.root, MANIFEST_PATH)

    @classmethod
    def load(cls, output: str, storage_options: dict[str, Any] | None = None) -> "Manifest":
        """The manifest of `output` (empty when there is none yet).

        Raises:
            ManifestError: the output's bucket does not exist, or the manifest file cannot be read.
        """
        fs, root = resolve(output, storage_options)
        bucket = missing_bucket(fs, root)
        if bucket:
            raise ManifestError(f"output {output!r}: bucket {bucket!r} does not exist or these credentials cannot "
                                f"see it; create it first (e.g. `aws s3 mb s3://{bucket}`) or fix --output")
        manifest = cls(fs, root)
        try:
            data = fs.cat_file(manifest.path)
        except FileNotFoundError:
            return manifest
        try:
            table = pq.read_table(pa.BufferReader(data)).cast(MANIFEST_SCHEMA)
        except (pa.ArrowInvalid, pa.ArrowTypeError, ValueError) as exc:
            raise ManifestError(f"{manifest.path} is not a readable manifest ({exc}); move it away and rerun with "
                                f"--set write.incremental=false to rebuild it") from exc
        manifest.entries = {row["uri"]: row for row in table.to_pylist()}
        logger.info("manifest of %s: %d videos", output, len(manifest.entries))
        return manifest

    def is_current(self, ref: dict[str, Any], outputs_hash: str) -> bool:
        """True when `ref` was processed without error from the same bytes (size, version) and settings, and no
        later attempt was left unrecorded (its files might sit in another partition)."""
        entry = self.entries.get(ref["uri"])
        return (entry is not None and entry["status"] == "ok" and not entry["pending"]
                and entry["outputs_hash"] == outputs_hash
                and entry["size"] == int(ref["size"]) and entry["version"] == str(ref["version"])
                and entry["version"] != "")  # no version: a changed file of the same size would go unseen

    def plan(self, ref: dict[str, Any], paths: list[str]) -> None:
        """Note every path this run may write for `ref`, before writing any (saved with the next `save`)."""
        entry = self.entries.get(ref["uri"]) or self._entry(ref, "", "planned", [], "")
        entry["pending"] = sorted(set(entry["pending"]) | {self._relative(p) for p in paths})
        self.entries[ref["uri"]] = entry
        self.dirty = True

    def record(self, ref: dict[str, Any], outputs_hash: str, paths: list[str], failed: bool = False,
               run_id: str = "") -> list[str]:
        """`ref`'s rows now live in `paths`; returns its earlier files not among them (to `remove`)."""
        old = self.entries.get(ref["uri"])
        known = set(old["paths"]) | set(old["pending"]) if old else set()
        new = [self._relative(p) for p in paths]
        self.entries[ref["uri"]] = self._entry(ref, outputs_hash, "failed" if failed else "ok", new, run_id)
        self.dirty = True
        return [join(self.root, p) for p in sorted(known - set(new))]

    def remove(self, paths: list[str]) -> None:
        """Delete files of the output (stale copies of re-processed videos); missing ones are fine."""
        for path in paths:
            try:
                self.fs.rm_file(path)
            except FileNotFoundError:
                continue
            logger.info("removed stale %s", path)

    def save(self) -> None:
        """Write the whole manifest atomically, when anything changed since the last save."""
        if not self.dirty:
            return
        rows = [self.entries[uri] for uri in sorted(self.entries)]
        write_parquet_atomic(self.fs, self.path, pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA))
        self.dirty, self.saved_at = False, time.monotonic()

    def maybe_save(self, every_s: float = 30.0) -> bool:
        """Save when records are unsaved and the last save is `every_s` old: a crash loses at most that much work,
        and a large manifest is not rewritten after every video."""
        if self.dirty and time.monotonic() - self.saved_at >= every_s:
            self.save()
            return True
        return False

    def _relative(self, path: str) -> str:
        if not path.startswith(self.root + "/"):
            raise ValueError(f"{path!r} is not under the output root {self.root!r}; pass OutputWriter.path(...) paths")
        return path[len(self.root) + 1:]

    @staticmethod
    def _entry(ref: dict[str, Any], outputs_hash: str, status: str, paths: list[str], run_id: str) -> dict[str, Any]:
        return {"uri": ref["uri"], "video_id": ref["video_id"], "size": int(ref["size"]),
                "version": str(ref["version"]), "outputs_hash": outputs_hash, "status": status, "paths": paths,
                "pending": [], "run_id": run_id,
                "processed_at": None if status == "planned" else dt.datetime.now(dt.timezone.utc)}
