"""The output tables as Delta Lake tables: where they live, how workers add files, how a commit replaces a video's
rows atomically, how the tables are compacted, and how they are read.

Each table of `pipeline.outputs.schema.TABLES` is a Delta table in its own folder under the output root
(`<root>/frames`, ...): hive-partitioned Parquet files plus the `_delta_log/` that says which files are current.
Workers write the data files (`write_files`) and hand back `DataFile` records; the driver commits many of them at
once (`TableCommitter`), so the log grows by one commit per wave of videos and table, never per video.

A video's rows are replaced, not duplicated, when it is processed again: the commit that adds its new rows also
removes every file that held its old rows, and adds those files' other rows back as new files (`replace_files`,
copy-on-write). Both happen in one Delta commit, so no reader ever sees the video twice or not at all.

Commits are optimistic: each names the videos it writes (commit metadata `posepipe`), is attempted at exactly the
next version (`max_commit_retries=0`), and before each attempt the commits made since by other runs are read. A
video another run wrote meanwhile is replaced too, so two runs into one output never duplicate a video's rows; the
last to commit wins.

delta-rs writes through its own object-store client, so the fsspec `storage_options` of a run are translated once
(`delta_options`); data files are written through fsspec like every other file of the project.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.outputs.schema import PARTITION_SCHEMA, TABLE_PARTITIONS, TABLES
from pipeline.storage import is_local, join, resolve, write_parquet_atomic

logger = logging.getLogger(__name__)

TARGET_FILE_BYTES = 128 * 2**20      # compaction's target: what Spark, Trino and DuckDB read best
METADATA_KEY = "posepipe"            # commit metadata: {"run_id": ..., "videos": [...]} of the rows a commit writes
STATS_COLUMNS = 32                   # file statistics for the first columns, as Delta's dataSkippingNumIndexedCols


class TableError(RuntimeError):
    """A commit that could not be made (after `TableCommitter.attempts` tries), or an unreadable table."""


def table_uri(output: str, name: str) -> str:
    return join(output, name)


def delta_options(uri: str, storage_options: dict[str, Any] | None) -> dict[str, str]:
    """fsspec storage options -> delta-rs (object_store) options for the same place.

    Credentials come from the same chain as fsspec's where none are given (environment, profile, instance role);
    an S3-compatible endpoint (`endpoint_url` or AWS_ENDPOINT_URL) carries over, plain http included.
    """
    import os

    options = dict(storage_options or {})
    out: dict[str, str] = {}
    if uri.startswith(("s3://", "s3a://")):
        client = options.get("client_kwargs") or {}
        endpoint = options.get("endpoint_url") or client.get("endpoint_url") \
            or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:
            out["AWS_ENDPOINT_URL"] = str(endpoint)
            if str(endpoint).startswith("http://"):
                out["AWS_ALLOW_HTTP"] = "true"
        for ours, theirs in (("key", "AWS_ACCESS_KEY_ID"), ("secret", "AWS_SECRET_ACCESS_KEY"),
                             ("token", "AWS_SESSION_TOKEN")):
            if options.get(ours):
                out[theirs] = str(options[ours])
        region = client.get("region_name") or options.get("region_name") or os.environ.get("AWS_REGION") \
            or os.environ.get("AWS_DEFAULT_REGION")
        if region:
            out["AWS_REGION"] = str(region)
    return out


def delta_schema(name: str) -> pa.Schema:
    """The table's Delta schema: its columns, then its partition columns."""
    schema = TABLES[name]
    for column in TABLE_PARTITIONS[name]:
        schema = schema.append(PARTITION_SCHEMA.field(column))
    return schema


def open_table(output: str, name: str, storage_options: dict[str, Any] | None = None, version: int | None = None):
    """The Delta table `name` of an output root (its latest version unless `version`), created when missing."""
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    uri = table_uri(output, name)
    options = delta_options(uri, storage_options)
    try:
        return DeltaTable(uri, version=version, storage_options=options)
    except TableNotFoundError:
        if version is not None:
            raise
    try:
        return DeltaTable.create(uri, schema=delta_schema(name), partition_by=list(TABLE_PARTITIONS[name]),
                                 mode="ignore", storage_options=options)
    except Exception:  # another run created it between the two calls
        return DeltaTable(uri, storage_options=options)


def table_exists(output: str, name: str, storage_options: dict[str, Any] | None = None) -> bool:
    from deltalake import DeltaTable

    uri = table_uri(output, name)
    return DeltaTable.is_deltatable(uri, storage_options=delta_options(uri, storage_options))


# ------------------------------------------------------------------------------------------------------------------
# Worker side: data files


@dataclass(frozen=True)
class DataFile:
    """A Parquet file written into a table and not yet committed: what its Delta add action needs."""
    path: str                          # relative to the table's folder
    size: int
    partition_values: dict[str, str]
    num_records: int
    stats: str                         # Delta file statistics (JSON)
    modification_time: int             # ms since the epoch

    def add_action(self):
        from deltalake.transaction import AddAction

        return AddAction(self.path, self.size, self.partition_values, self.modification_time, True, self.stats)


def file_stats(table: pa.Table) -> str:
    """Delta's per-file statistics: row count, and min, max and null count of the first plain columns (strings,
    integers, floats, dates), which let readers skip files, e.g. by video_id."""
    minimum, maximum, nulls = {}, {}, {}
    for field_ in list(table.schema)[:STATS_COLUMNS]:
        kind = field_.type
        if not (pa.types.is_string(kind) or pa.types.is_integer(kind) or pa.types.is_floating(kind)
                or pa.types.is_date(kind)):
            continue
        column = table.column(field_.name)
        nulls[field_.name] = column.null_count
        if column.null_count == len(column):
            continue
        low, high = pc.min_max(column).values()
        if pa.types.is_floating(kind) and (pc.is_nan(low).as_py() or pc.is_nan(high).as_py()):
            continue
        low, high = low.as_py(), high.as_py()
        if pa.types.is_date(kind):
            low, high = low.isoformat(), high.isoformat()
        minimum[field_.name], maximum[field_.name] = low, high
    return json.dumps({"numRecords": table.num_rows, "minValues": minimum, "maxValues": maximum,
                       "nullCount": nulls})


def partition_value(value: Any) -> str:
    return value.isoformat() if isinstance(value, (dt.date, dt.datetime)) else str(value)


def write_files(output: str, name: str, table: pa.Table, run_id: str,
                storage_options: dict[str, Any] | None = None) -> list[DataFile]:
    """Write `table` (the table's columns plus its partition columns) as one Parquet file per partition, under
    hive paths (`date=.../source=.../part-<run>-<id>.parquet`), partition columns in the path only. Rows keep their
    order. Nothing is visible to Delta readers until the files are committed."""
    if table.num_rows == 0:
        return []
    partitions = list(TABLE_PARTITIONS[name])
    fs, root = resolve(table_uri(output, name), storage_options)
    keys = table.select(partitions).to_pylist()
    groups: dict[tuple, list[int]] = {}
    for i, key in enumerate(keys):
        groups.setdefault(tuple(partition_value(key[c]) for c in partitions), []).append(i)
    files = []
    columns = TABLES[name].names
    for values, rows in groups.items():
        part = table.take(pa.array(rows)).select(columns).cast(TABLES[name])
        relative = "/".join([f"{c}={v}" for c, v in zip(partitions, values)]
                            + [f"part-{run_id}-{uuid.uuid4().hex[:12]}.zstd.parquet"])
        size = write_parquet_atomic(fs, join(root, relative), part)
        files.append(DataFile(relative, size, dict(zip(partitions, values)), part.num_rows, file_stats(part),
                              int(time.time() * 1000)))
    return files


def delete_files(output: str, name: str, files: Iterable[DataFile],
                 storage_options: dict[str, Any] | None = None) -> None:
    """Remove written files that will never be committed (a superseded rewrite); missing ones are fine."""
    fs, root = resolve(table_uri(output, name), storage_options)
    for file in files:
        try:
            fs.rm_file(join(root, file.path))
        except FileNotFoundError:
            pass


@dataclass
class Replacement:
    """What replacing some videos' rows in one table version takes: the files holding any of their rows (removed)
    and those files' other rows (`added`, written as new files)."""
    version: int
    removed: list[dict[str, Any]] = field(default_factory=list)   # path, size, partition_values
    added: list[DataFile] = field(default_factory=list)


def replace_files(output: str, name: str, video_ids: list[str], run_id: str, version: int,
                  storage_options: dict[str, Any] | None = None) -> Replacement:
    """The files of table version `version` that hold rows of `video_ids`, and their other rows written anew.

    Files are picked by their video_id statistics, then by reading their video_id column; only files with a match
    are rewritten (copy-on-write). Runs in a worker: it reads table data.
    """
    replacement = Replacement(version)
    if not video_ids:
        return replacement
    table = open_table(output, name, storage_options, version=version)
    actions = pa.table(table.get_add_actions(flatten=True))
    if actions.num_rows == 0:
        return replacement
    wanted = pa.array(sorted(set(video_ids)), pa.string())
    candidates = pc.fill_null(pc.and_(pc.less_equal(actions["min.video_id"], wanted[-1]),
                                      pc.greater_equal(actions["max.video_id"], wanted[0])), True) \
        if "min.video_id" in actions.column_names else pa.array([True] * actions.num_rows)
    fs, root = resolve(table_uri(output, name), storage_options)
    partitions = list(TABLE_PARTITIONS[name])
    for row in actions.filter(candidates).to_pylist():
        path = join(root, row["path"])
        ids = pq.read_table(fs.open(path, "rb") if not is_local(fs) else path, columns=["video_id"])["video_id"]
        hit = pc.is_in(ids, value_set=wanted)
        if not pc.any(hit).as_py():
            continue
        values = {c: row[f"partition.{c}"] for c in partitions}
        replacement.removed.append({"path": row["path"], "size": int(row["size_bytes"]),
                                    "partition_values": {c: partition_value(v) for c, v in values.items()}})
        rest = pq.read_table(fs.open(path, "rb") if not is_local(fs) else path).filter(pc.invert(hit))
        if rest.num_rows:
            for column in partitions:
                spec = PARTITION_SCHEMA.field(column)
                rest = rest.append_column(spec, pa.array([values[column]] * rest.num_rows, spec.type))
            replacement.added += write_files(output, name, rest, run_id, storage_options)
    return replacement


# ------------------------------------------------------------------------------------------------------------------
# Driver side: commits


@dataclass
class Changes:
    """Files to add to one table and the videos whose rows they are; `replace` lists the videos whose earlier rows
    (from any run) must go in the same commit."""
    files: list[DataFile] = field(default_factory=list)
    videos: set[str] = field(default_factory=set)
    replace: set[str] = field(default_factory=set)

    def merge(self, other: "Changes") -> None:
        self.files += other.files
        self.videos |= other.videos
        self.replace |= other.replace


ReplaceFn = Callable[[str, list[str], int], Replacement]   # (table name, video ids, version) -> Replacement


class TableCommitter:
    """Commits changes to one table of one run, optimistically (see the module docstring).

    `replace` computes a Replacement in a worker (it reads table data); it is called only when a commit has videos
    to replace: processed before, suspected of leftovers, or written by another run since this run began.
    """

    attempts = 20

    def __init__(self, output: str, name: str, run_id: str, storage_options: dict[str, Any] | None,
                 replace: ReplaceFn):
        self.output, self.name, self.run_id = output, name, run_id
        self.storage_options, self.replace_fn = storage_options, replace
        self.table = open_table(output, name, storage_options)
        self.seen_version = self.table.version()       # other runs' commits up to here are in `others`
        self.others: set[str] = set()                   # videos other runs committed since this run began
        self.commits = 0

    def read_others(self) -> int:
        """Bring the table to its latest version and note the videos other runs wrote since the last look."""
        self.table.update_incremental()
        version = self.table.version()
        if version > self.seen_version:
            for commit in self.table.history(limit=version - self.seen_version):
                meta = commit_metadata(commit)
                if meta and meta.get("run_id") != self.run_id:
                    self.others.update(meta.get("videos", []))
            self.seen_version = version
        return version

    def commit(self, changes: Changes) -> int:
        """Commit `changes` in one Delta commit; returns the new version. Raises TableError after `attempts`."""
        from deltalake.exceptions import CommitFailedError
        from deltalake.transaction import CommitProperties, RemoveAction

        replacement: Replacement | None = None
        for attempt in range(self.attempts):
            version = self.read_others()
            replace = sorted(changes.replace | (changes.videos & self.others))
            if replace and (replacement is None or replacement.version != version):
                if replacement is not None:
                    delete_files(self.output, self.name, replacement.added, self.storage_options)
                replacement = self.replace_fn(self.name, replace, version)
            now = int(time.time() * 1000)
            removes = [RemoveAction(path=r["path"], data_change=True, deletion_timestamp=now,
                                    partition_values=r["partition_values"], size=r["size"])
                       for r in (replacement.removed if replacement else [])]
            adds = [f.add_action() for f in changes.files + (replacement.added if replacement else [])]
            if not adds and not removes:
                return version
            meta = {METADATA_KEY: json.dumps({"run_id": self.run_id, "videos": sorted(changes.videos)})}
            try:
                self.table.create_write_transaction(
                    adds + removes, mode="append", schema=delta_schema(self.name),
                    partition_by=list(TABLE_PARTITIONS[self.name]),
                    commit_properties=CommitProperties(custom_metadata=meta, max_commit_retries=0))
            except CommitFailedError as exc:   # another commit got this version first: look again, retry
                logger.info("%s: commit at version %d lost to another writer (%s); retrying", self.name,
                            version + 1, str(exc).splitlines()[0])
                time.sleep(min(2.0, 0.05 * 2**attempt))
                continue
            self.commits += 1
            self.seen_version = version + 1      # our own commit: nothing to note
            return version + 1
        raise TableError(f"{table_uri(self.output, self.name)}: no commit after {self.attempts} attempts; other "
                         f"writers kept committing first")


def commit_metadata(commit: dict[str, Any]) -> dict[str, Any] | None:
    """posepipe's metadata of one commit (from `DeltaTable.history`), None for commits of other writers."""
    raw = commit.get(METADATA_KEY)
    if raw is None:
        return None
    try:
        return json.loads(raw) if isinstance(raw, str) else dict(raw)
    except (TypeError, ValueError):
        return None


def recent_writes(output: str, name: str, storage_options: dict[str, Any] | None = None,
                  commits: int = 200) -> list[tuple[str, str]]:
    """(run_id, video_id) of the videos that the last `commits` posepipe commits of a table wrote."""
    if not table_exists(output, name, storage_options):
        return []
    table = open_table(output, name, storage_options)
    pairs = []
    for commit in table.history(limit=commits):
        meta = commit_metadata(commit)
        if meta:
            pairs += [(meta.get("run_id", ""), video) for video in meta.get("videos", [])]
    return pairs


# ------------------------------------------------------------------------------------------------------------------
# Maintenance and reading


def compact(output: str, name: str, storage_options: dict[str, Any] | None = None, retention_hours: int = 0,
            orphan_hours: int = 1, target_size: int = TARGET_FILE_BYTES) -> dict[str, Any]:
    """Compact small files into files of about `target_size`, then vacuum: files removed more than `retention_hours`
    ago are deleted (0: at once, so plain Parquet readers of the folder see exactly the current rows), and files
    no commit ever added (a killed run's) once `orphan_hours` old (younger ones may belong to a run still going).
    Runs in a worker: compaction reads and writes table data. Returns what was done."""
    from deltalake.exceptions import CommitFailedError

    table = open_table(output, name, storage_options)
    try:
        metrics = table.optimize.compact(target_size=target_size)
    except CommitFailedError as exc:   # another run changed those files meanwhile: its next compaction will do it
        logger.warning("%s: compaction skipped (%s)", name, str(exc).splitlines()[0])
        metrics = {"numFilesAdded": 0, "numFilesRemoved": 0}
    table.update_incremental()
    removed = table.vacuum(retention_hours=retention_hours, enforce_retention_duration=False, dry_run=False)
    orphans = table.vacuum(retention_hours=orphan_hours, enforce_retention_duration=False, dry_run=False, full=True)
    return {"table": name, "files_added": int(metrics.get("numFilesAdded", 0)),
            "files_removed": int(metrics.get("numFilesRemoved", 0)), "vacuumed": len(removed) + len(orphans),
            "version": table.version()}


def current_files(output: str, name: str, storage_options: dict[str, Any] | None = None) -> list[str]:
    """Paths (relative to the table's folder) of the files that hold the table's current rows."""
    if not table_exists(output, name, storage_options):
        return []
    return pa.table(open_table(output, name, storage_options).get_add_actions())["path"].to_pylist()


def read_table(output: str, name: str, storage_options: dict[str, Any] | None = None,
               columns: list[str] | None = None, version: int | None = None) -> pa.Table:
    """The current rows of a table (or of `version`), as one Arrow table; an empty one with the schema's columns
    when the table does not exist yet."""
    if not table_exists(output, name, storage_options):
        schema = delta_schema(name)
        return (schema if columns is None else pa.schema([schema.field(c) for c in columns])).empty_table()
    dataset = open_table(output, name, storage_options, version=version).to_pyarrow_dataset()
    return dataset.to_table(columns=columns)
