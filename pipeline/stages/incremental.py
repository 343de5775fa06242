"""Incremental runs: which listed videos a run processes, read from the output's own tables.

The `videos` table holds one row per processed video: the file as it was (size, version), the settings and model
that shaped its rows (`outputs_hash`) and whether it succeeded. A listed video is *current*, and skipped, when its
row says ok for the same size, version and outputs hash. Everything else is processed: new videos, changed ones,
failed ones (retried by every run), and all of them when the model or a setting that shapes rows changed.

A processed video is marked `replace` when earlier rows of it may exist: it has a videos row, or a recent commit of
another run wrote it without a matching videos row (a run killed between its commits, or one still running). The
commit that writes its new rows removes the old ones (`pipeline.outputs.tables`). Planning reads one table's few
columns and the last commits of each log, so it costs seconds at a million videos (docs/performance.md).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.config import RunConfig
from pipeline.outputs.tables import read_table, recent_writes

logger = logging.getLogger(__name__)

# + grouping, topdown, tracking and the checkpoint's metadata
OUTPUT_SETTINGS = {"decode": ("every_nth", "fps", "max_frames"), "model": ("precision", "flip_test", "frame_size")}
STATE_COLUMNS = ["uri", "video_id", "run_id", "status", "size_bytes", "version", "outputs_hash"]
SUSPECT_TABLES = ("frames", "tracks", "errors", "videos")
RECENT_COMMITS = 200                    # per table: how far back leftovers of a killed run are looked for

REF_SCHEMA = pa.schema([pa.field("uri", pa.string()), pa.field("video_id", pa.string()),
                        pa.field("source", pa.string()), pa.field("size", pa.int64()),
                        pa.field("version", pa.string())])


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


def refs_table(refs: list[dict[str, Any]]) -> pa.Table:
    """Listed videos (`pipeline.stages.read.list_videos`) as columns."""
    return pa.Table.from_pylist([{key: ref[key] for key in REF_SCHEMA.names} for ref in refs], schema=REF_SCHEMA)


@dataclass
class Plan:
    todo: pa.Table          # the listed videos to process (REF_SCHEMA) and `replace` (bool), in listing order
    skipped: int            # listed videos that are current


def plan_videos(output: str, listed: pa.Table, outputs_key: str, storage_options: dict[str, Any] | None = None,
                incremental: bool = True) -> Plan:
    """Which of `listed` (REF_SCHEMA) to process into `output`; with `incremental` off, every one of them."""
    state = read_table(output, "videos", storage_options, columns=STATE_COLUMNS)
    joined = listed.append_column("order", pa.array(range(listed.num_rows), pa.int64())) \
        .join(state.rename_columns([f"state_{c}" if c != "uri" else c for c in STATE_COLUMNS]), "uri",
              join_type="left outer").sort_by("order")
    known = pc.is_valid(joined["state_status"])
    suspects = leftovers(output, state, storage_options)
    suspect = pc.is_in(joined["video_id"], value_set=pa.array(sorted(suspects), pa.string()))
    current = pc.fill_null(pc.and_kleene(
        pc.and_kleene(pc.equal(joined["state_status"], "ok"), pc.equal(joined["state_size_bytes"], joined["size"])),
        pc.and_kleene(pc.and_kleene(pc.equal(joined["state_version"], joined["version"]),
                                    pc.not_equal(joined["version"], "")),
                      pc.equal(joined["state_outputs_hash"], outputs_key))), False)
    current = pc.and_(current, pc.invert(suspect))
    if not incremental:
        current = pa.array([False] * joined.num_rows)
    todo = joined.filter(pc.invert(current))
    replace = pc.or_(pc.is_valid(todo["state_status"]),
                     pc.is_in(todo["video_id"], value_set=pa.array(sorted(suspects), pa.string())))
    todo = todo.select(REF_SCHEMA.names).append_column("replace", replace)
    skipped = int(pc.sum(current).as_py() or 0)
    logger.info("%d listed, %d current (skipped), %d to process (%d replacing earlier rows); %d known videos",
                listed.num_rows, skipped, todo.num_rows, int(pc.sum(replace).as_py() or 0),
                int(pc.sum(known).as_py() or 0))
    return Plan(todo, skipped)


def leftovers(output: str, state: pa.Table, storage_options: dict[str, Any] | None = None) -> set[str]:
    """Videos that recent commits wrote under a run other than the one their videos row names (or with no videos
    row): a run killed between a wave's commits left rows of them, or a run still going is writing them."""
    written: dict[str, set[str]] = {}
    for name in SUSPECT_TABLES:
        for run_id, video_id in recent_writes(output, name, storage_options, RECENT_COMMITS):
            written.setdefault(video_id, set()).add(run_id)
    if not written:
        return set()
    rows = state.filter(pc.is_in(state["video_id"], value_set=pa.array(sorted(written), pa.string())))
    owner = dict(zip(rows["video_id"].to_pylist(), rows["run_id"].to_pylist()))
    return {video_id for video_id, runs in written.items() if runs - {owner.get(video_id)}}
