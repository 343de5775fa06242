"""The Delta tables themselves: a replaced video is never seen twice at any version, two writers into one output lose
and duplicate nothing, compaction sizes the files and vacuum leaves plain readers the current rows, and a nightly
plan reads its state from the videos table."""

from __future__ import annotations

import datetime as dt
import multiprocessing
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from deltalake import DeltaTable

from pipeline.outputs.tables import Changes, TableCommitter, compact, read_table, replace_files, write_files
from pipeline.stages.assemble import TrackedVideo
from pipeline.stages.incremental import plan_videos, refs_table
from pipeline.stages.write import WaveContext, video_tables, with_partitions, write_videos_now

DATE = dt.date(2026, 3, 4)
KEYPOINTS = 17


def ref(name: str, source: str = "cam1", size: int = 100, version: str = "1") -> dict:
    return {"video_id": f"{name}-id", "uri": f"/videos/{source}/{name}.mp4", "source": source, "size": size,
            "version": version}


def people(frames: int, per_frame: int, score: float) -> TrackedVideo:
    """`frames` frames of `per_frame` people each, all scored `score` (which run wrote a row shows in its score)."""
    kp = np.full((per_frame, KEYPOINTS, 3), 10.0, np.float32)
    return TrackedVideo.from_frames([(t, t / 10, 64, 48, np.arange(per_frame), np.full(per_frame, score, np.float32),
                                      kp) for t in range(frames)])


def context(root: Path, run_id: str, outputs_hash: str = "h1") -> WaveContext:
    return WaveContext(str(root), run_id, DATE, outputs_hash)


def frames_of(table: pa.Table) -> pd.DataFrame:
    return table.to_pandas().groupby("video_id").agg(rows=("frame_index", "size"), score=("person_score", "max"))


def test_a_replaced_video_is_never_seen_twice_or_missing_at_any_version(tmp_path):
    write_videos_now(context(tmp_path, "run-a"), [(ref("a"), people(10, 2, 0.25)), (ref("b"), people(6, 1, 0.25))])
    write_videos_now(context(tmp_path, "run-b"), [(ref("a"), people(7, 1, 0.5))])    # a is processed again

    table = DeltaTable(str(tmp_path / "frames"))
    counts = {}
    for version in range(table.version() + 1):
        snapshot = read_table(str(tmp_path), "frames", version=version)
        counts[version] = frames_of(snapshot).to_dict("index") if snapshot.num_rows else {}
    assert counts[0] == {}                                                       # created empty
    assert counts[1] == {"a-id": {"rows": 20, "score": 0.25}, "b-id": {"rows": 6, "score": 0.25}}
    assert counts[2] == {"a-id": {"rows": 7, "score": 0.5}, "b-id": {"rows": 6, "score": 0.25}}
    videos = read_table(str(tmp_path), "videos").to_pandas().set_index("video_id")
    assert videos.loc["a-id", "run_id"] == "run-b" and videos.loc["b-id", "run_id"] == "run-a" and len(videos) == 2


def test_replace_files_rewrites_only_the_files_that_hold_the_videos(tmp_path):
    write_videos_now(context(tmp_path, "run-a"), [(ref("a"), people(3, 1, 0.25))])
    write_videos_now(context(tmp_path, "run-a"), [(ref("b"), people(3, 1, 0.25)), (ref("c"), people(3, 1, 0.25))])
    version = DeltaTable(str(tmp_path / "frames")).version()
    replacement = replace_files(str(tmp_path), "frames", ["b-id"], "run-x", version)
    assert len(replacement.removed) == 1                                       # the file with b and c, not a's
    [added] = replacement.added
    assert added.num_records == 3 and '"c-id"' in added.stats                   # c's rows, written anew


def concurrent_writer(root: str, run_id: str, rounds: int, score: float) -> None:
    """A run writing the same videos as another, round after round, each round one commit per table."""
    for i in range(rounds):
        videos = [(ref(f"shared{i % 3}"), people(4, 2, score)), (ref(f"{run_id}-{i}"), people(3, 1, score))]
        write_videos_now(context(Path(root), run_id), videos)


@pytest.mark.timeout(300)
def test_two_runs_into_one_output_at_once_lose_and_duplicate_nothing(tmp_path):
    """Two processes commit to the same tables at the same time, each replacing the videos the other writes."""
    ctx = multiprocessing.get_context("spawn")
    rounds = 6
    writers = [ctx.Process(target=concurrent_writer, args=(str(tmp_path), run_id, rounds, score))
               for run_id, score in (("run-1", 0.25), ("run-2", 0.5))]
    for w in writers:
        w.start()
    for w in writers:
        w.join(240)
    assert [w.exitcode for w in writers] == [0, 0]

    frames = frames_of(read_table(str(tmp_path), "frames"))
    own = {f"{run}-{i}-id" for run in ("run-1", "run-2") for i in range(rounds)}
    assert set(frames.index) == own | {"shared0-id", "shared1-id", "shared2-id"}       # nothing lost
    assert (frames.loc[sorted(own), "rows"] == 3).all()
    assert (frames.loc[["shared0-id", "shared1-id", "shared2-id"], "rows"] == 8).all()  # never two runs' rows
    videos = read_table(str(tmp_path), "videos").to_pandas().set_index("video_id")
    assert len(videos) == len(own) + 3
    for shared in ("shared0-id", "shared1-id", "shared2-id"):   # the videos row names the run whose rows are there
        winner = {0.25: "run-1", 0.5: "run-2"}[float(frames.loc[shared, "score"])]
        assert videos.loc[shared, "run_id"] == winner
    tracks = read_table(str(tmp_path), "tracks").to_pandas()
    assert not tracks.duplicated(["video_id", "track_id"]).any()


def test_a_commit_that_loses_the_race_replaces_what_the_winner_wrote(tmp_path):
    """Deterministic form of the race: run 1 prepares its commit, run 2 commits the same video first."""
    root = str(tmp_path)
    first = TableCommitter(root, "frames", "run-1", {}, lambda name, ids, version: replace_files(
        root, name, ids, "run-1", version))
    second = TableCommitter(root, "frames", "run-2", {}, lambda *args: None)

    def files(run_id: str, score: float):
        rows = with_partitions(video_tables(ref("v"), people(5, 1, score), run_id, "h")["frames"], DATE, "cam1")
        return write_files(root, "frames", rows, run_id)

    mine = files("run-1", 0.25)
    second.commit(Changes(files("run-2", 0.5), {"v-id"}))                       # the other run commits first
    first.commit(Changes(mine, {"v-id"}))                                        # conflict: retried, replacing v
    assert frames_of(read_table(root, "frames")).to_dict("index") == {"v-id": {"rows": 5, "score": 0.25}}


def test_compaction_makes_one_file_per_partition_and_vacuum_leaves_plain_readers_the_current_rows(tmp_path):
    for i in range(5):                                      # five commits, five small files per partition
        write_videos_now(context(tmp_path, f"run-{i}"), [(ref(f"v{i}"), people(4, 1, 0.25)),
                                                         (ref(f"w{i}", "cam2"), people(4, 1, 0.25))])
    write_videos_now(context(tmp_path, "run-9"), [(ref("v0"), people(2, 1, 0.75))])   # replaces v0's rows
    folder = tmp_path / "frames"
    assert len(list(folder.rglob("*.parquet"))) > len(DeltaTable(str(folder)).file_uris())  # stale files remain
    stale = pd.read_parquet(folder)
    assert len(stale) > read_table(str(tmp_path), "frames").num_rows                 # a plain reader sees them

    done = compact(str(tmp_path), "frames")
    assert done["files_removed"] >= 6 and done["files_added"] == 2
    assert sorted(p.parent.name for p in folder.rglob("*.parquet")) == ["source=cam1", "source=cam2"]
    plain = pd.read_parquet(folder)
    current = read_table(str(tmp_path), "frames").to_pandas()
    assert len(plain) == len(current) == 4 * 9 + 2
    assert plain.groupby("video_id").size().to_dict() == current.groupby("video_id").size().to_dict()


def test_a_retention_window_keeps_replaced_files_for_time_travel(tmp_path):
    write_videos_now(context(tmp_path, "run-a"), [(ref("a"), people(3, 1, 0.25))])
    write_videos_now(context(tmp_path, "run-b"), [(ref("a"), people(2, 1, 0.5))])
    compact(str(tmp_path), "frames", retention_hours=24)
    assert read_table(str(tmp_path), "frames", version=1).num_rows == 3              # the old version still reads
    assert read_table(str(tmp_path), "frames").num_rows == 2


def test_planning_reads_the_videos_table(tmp_path):
    write_videos_now(context(tmp_path, "run-a"), [(ref("same"), people(2, 1, 0.25)), (ref("grown"), people(2, 1, 0.25)),
                                                  (ref("broken"), TrackedVideo.from_frames([]))],
                     errors={"broken-id": "open|InvalidDataError|cannot open"})
    listed = refs_table([ref("same"), ref("grown", size=200), ref("broken"), ref("new")])
    plan = plan_videos(str(tmp_path), listed, "h1")
    assert plan.skipped == 1
    assert plan.todo.select(["video_id", "replace"]).to_pylist() == [
        {"video_id": "grown-id", "replace": True}, {"video_id": "broken-id", "replace": True},
        {"video_id": "new-id", "replace": False}]
    assert plan_videos(str(tmp_path), listed, "h2").skipped == 0                      # a new model: everything
    assert plan_videos(str(tmp_path), listed, "h1", incremental=False).todo.num_rows == 4
    no_version = refs_table([ref("same", version="")])                                # no version: never trusted
    assert plan_videos(str(tmp_path), no_version, "h1").skipped == 0
    assert plan_videos(str(tmp_path / "new-output"), listed, "h1").todo["replace"].to_pylist() == [False] * 4
