"""The manifest of incremental runs: what is current, what a crash leaves, which files become stale."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from jobs.run import load_run_config, parse_args, run
from pipeline.config import RunConfig
from pipeline.stages.manifest import MANIFEST_PATH, MANIFEST_SCHEMA, Manifest, ManifestError, outputs_hash
from pipeline.stages.write import partition_path

from conftest import encode_video

REF = {"uri": "s3://b/videos/cam0/walk.mp4", "video_id": "walk-0123456789", "source": "cam0", "size": 1000,
       "version": "etag-1"}


def paths_on(root: Path, date: str, tables=("frames", "tracks", "errors")) -> list[str]:
    """The files a run on `date` writes for REF, created for real so that removals can be seen."""
    paths = [partition_path(str(root), t, date, REF["source"], REF["video_id"]) for t in tables]
    for path in map(Path, paths):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"rows")
    return paths


def exists(paths: list[str]) -> list[bool]:
    return [Path(p).exists() for p in paths]


def test_record_save_load_round_trip_and_what_counts_as_current(tmp_path):
    manifest = Manifest.load(str(tmp_path))
    assert manifest.entries == {} and not manifest.is_current(REF, "h1")
    manifest.record(REF, "h1", paths_on(tmp_path, "2026-01-01")[:2], run_id="r1")
    manifest.save()

    loaded = Manifest.load(str(tmp_path))
    assert pq.read_schema(tmp_path / MANIFEST_PATH).remove_metadata() == MANIFEST_SCHEMA
    assert loaded.entries[REF["uri"]]["paths"] == ["frames/date=2026-01-01/source=cam0/walk-0123456789.parquet",
                                                   "tracks/date=2026-01-01/source=cam0/walk-0123456789.parquet"]
    assert loaded.is_current(REF, "h1")
    assert not loaded.is_current(REF, "h2")                                   # other settings or checkpoint
    assert not loaded.is_current(REF | {"size": 1001}, "h1")                  # other bytes
    assert not loaded.is_current(REF | {"version": "etag-2"}, "h1")
    assert not loaded.is_current(REF | {"uri": "s3://b/videos/cam0/other.mp4"}, "h1")


def test_failed_and_versionless_videos_are_never_current(tmp_path):
    manifest = Manifest.load(str(tmp_path))
    manifest.record(REF, "h", paths_on(tmp_path, "2026-01-01", tables=("errors",)), failed=True)
    assert not manifest.is_current(REF, "h")                                  # retried by the next run
    unversioned = REF | {"uri": "http://host/x.mp4", "version": ""}
    manifest.record(unversioned, "h", [])
    assert not manifest.is_current(unversioned, "h")


def test_reprocessing_on_a_later_date_removes_the_older_partitions_files(tmp_path):
    manifest = Manifest.load(str(tmp_path))
    first = paths_on(tmp_path, "2026-01-01")
    assert manifest.record(REF, "h", first) == []
    second = paths_on(tmp_path, "2026-01-02")[:2]                             # this time no error row
    manifest.plan(REF, second)
    stale = manifest.record(REF, "h", second)
    assert stale == sorted(first)
    manifest.remove(stale + stale)                                            # removing twice is harmless
    assert exists(first) == [False] * 3 and exists(second) == [True] * 2


def test_a_crash_between_writing_and_recording_is_redone_without_duplicates(tmp_path):
    manifest = Manifest.load(str(tmp_path))
    day1 = paths_on(tmp_path, "2026-01-01")[:2]
    manifest.record(REF, "h", day1)
    manifest.save()
    # run 2 (video changed): plans and saves, writes its files on day 2, dies before recording
    changed = REF | {"version": "etag-2"}
    crashed = Manifest.load(str(tmp_path))
    day2 = paths_on(tmp_path, "2026-01-02")[:2]
    crashed.plan(changed, day2)
    crashed.save()
    # run 3 on day 3: the video is not current, and both earlier attempts' files are stale
    rerun = Manifest.load(str(tmp_path))
    assert not rerun.is_current(changed, "h") and not rerun.is_current(REF, "h")
    day3 = paths_on(tmp_path, "2026-01-03")[:2]
    rerun.plan(changed, day3)
    rerun.remove(rerun.record(changed, "h", day3))
    rerun.save()
    assert exists(day1 + day2) == [False] * 4 and exists(day3) == [True] * 2
    assert Manifest.load(str(tmp_path)).is_current(changed, "h")


def test_an_unfinished_rerun_of_a_current_video_makes_it_not_current(tmp_path):
    manifest = Manifest.load(str(tmp_path))
    manifest.record(REF, "h", paths_on(tmp_path, "2026-01-01")[:2])
    manifest.plan(REF, paths_on(tmp_path, "2026-01-02")[:2])               # write.incremental=false, then a crash
    assert not manifest.is_current(REF, "h")


def test_maybe_save_bounds_how_often_the_manifest_is_rewritten(tmp_path):
    manifest = Manifest.load(str(tmp_path))
    manifest.save()
    assert not manifest.maybe_save(every_s=0) and not (tmp_path / "_manifest").exists()  # nothing to save
    manifest.record(REF, "h", [])
    assert not manifest.maybe_save(every_s=3600) and not (tmp_path / MANIFEST_PATH).exists()
    assert manifest.maybe_save(every_s=0) and (tmp_path / MANIFEST_PATH).exists()
    assert [p.name for p in (tmp_path / "_manifest").iterdir()] == ["videos.parquet"]  # no temporary left


def test_paths_outside_the_output_and_unreadable_manifests_are_errors(tmp_path):
    manifest = Manifest.load(str(tmp_path / "out"))
    with pytest.raises(ValueError, match="not under the output root"):
        manifest.record(REF, "h", [str(tmp_path / "elsewhere" / "x.parquet")])
    (tmp_path / "out" / "_manifest").mkdir(parents=True)
    (tmp_path / "out" / MANIFEST_PATH).write_bytes(b"not parquet")
    with pytest.raises(ManifestError, match="write.incremental=false"):
        Manifest.load(str(tmp_path / "out"))


def test_memory_filesystem_uses_the_same_code_path():
    manifest = Manifest.load("memory://posepipe-test-manifest/out")
    manifest.record(REF, "h", ["/posepipe-test-manifest/out/frames/date=2026-01-01/source=cam0/x.parquet"])
    manifest.save()
    assert Manifest.load("memory://posepipe-test-manifest/out").is_current(REF, "h")


def test_outputs_hash_follows_what_changes_rows_not_what_changes_speed():
    meta = {"created_at": "2026-01-01T00:00:00+00:00", "epoch": 3}
    base = outputs_hash(RunConfig(), meta)
    same = RunConfig.model_validate({"decode": {"workers": 7, "batch_size": 8}, "model": {"workers": 3},
                                     "write": {"date": "2026-02-02"}, "output": "s3://x/y", "ray": {"address": "auto"}})
    assert outputs_hash(same, meta) == base
    assert outputs_hash(RunConfig.model_validate({"decode": {"fps": 5}}), meta) != base
    assert outputs_hash(RunConfig.model_validate({"grouping": {"min_keypoints": 2}}), meta) != base
    assert outputs_hash(RunConfig.model_validate({"model": {"flip_test": True}}), meta) != base
    assert outputs_hash(RunConfig(), meta | {"epoch": 4}) != base              # a new checkpoint


@pytest.mark.slow
def test_nightly_run_skips_unchanged_videos_and_moves_changed_ones(tmp_path, random_checkpoint):
    """Through the real job: run 1 on day 1; one video re-encoded and one added; run 2 on day 2."""
    encode_video(tmp_path / "in" / "cam0" / "a.mp4", num_frames=4, width=64, height=48)
    encode_video(tmp_path / "in" / "cam0" / "b.mp4", num_frames=4, width=64, height=48)

    def night(date: str):
        return run(load_run_config(parse_args([
            "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"),
            "--set", f"model.checkpoint={random_checkpoint}", "--set", f"write.date={date}"])))

    first = night("2026-01-01")
    encode_video(tmp_path / "in" / "cam0" / "b.mp4", num_frames=6, width=64, height=48)   # changed
    encode_video(tmp_path / "in" / "cam0" / "c.mp4", num_frames=4, width=64, height=48)   # new
    second = night("2026-01-02")
    assert (first.videos_ok, first.videos_skipped) == (2, 0)
    assert (second.videos_listed, second.videos_ok, second.videos_skipped, second.frames) == (3, 2, 1, 10)
    files = sorted(p.relative_to(tmp_path / "out" / "frames").as_posix().rsplit("-", 1)[0]
                   for p in (tmp_path / "out" / "frames").rglob("*.parquet"))
    assert files == ["date=2026-01-01/source=cam0/a", "date=2026-01-02/source=cam0/b",
                     "date=2026-01-02/source=cam0/c"]
