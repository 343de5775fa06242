"""The main job end to end through a real local Ray: real videos in, Delta tables out, read back with deltalake,
pandas and DuckDB."""

import duckdb
import pandas as pd
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable

from jobs.run import EXIT_USAGE, MIN_RATE_SECONDS, load_run_config, main, parse_args, run
from pipeline.outputs.query import connect
from pipeline.outputs.schema import ERRORS_SCHEMA, FRAMES_SCHEMA, RUNS_SCHEMA, TRACKS_SCHEMA, VIDEOS_SCHEMA

from conftest import encode_video


@pytest.fixture
def archive(tmp_path):
    encode_video(tmp_path / "in" / "cam1" / "walk.mp4", num_frames=20, width=160, height=120)
    encode_video(tmp_path / "in" / "cam2" / "wide.mkv", num_frames=12, width=200, height=80)
    (tmp_path / "in" / "cam2" / "broken.mp4").write_bytes(b"\x00" * 100)
    return tmp_path


def config_for(archive, checkpoint, *extra):
    args = parse_args(["--input", str(archive / "in"), "--output", str(archive / "out"),
                       "--set", f"model.checkpoint={checkpoint}", "--set", "decode.batch_size=8",
                       "--set", "model.batch_size=8", "--set", "write.date=2026-01-02", *extra])
    return load_run_config(args)


@pytest.mark.slow
def test_run_writes_queryable_partitioned_delta_tables(ray_local, archive, random_checkpoint):
    summary = run(config_for(archive, random_checkpoint, "--set", "decode.every_nth=2"))
    assert (summary.videos_listed, summary.videos_ok, summary.videos_failed) == (3, 2, 1)
    assert summary.status == "partial" and summary.exit_code == 3
    assert summary.frames == 10 + 6                                   # every 2nd frame of 20 and 12
    assert sorted(frames for _, frames in summary.finished) == [0, 6, 10]  # per video as it finished, the bad one too
    assert all(0 < t <= summary.seconds for t, _ in summary.finished)

    out = archive / "out"
    for table, schema in [("frames", FRAMES_SCHEMA), ("tracks", TRACKS_SCHEMA), ("errors", ERRORS_SCHEMA),
                          ("videos", VIDEOS_SCHEMA), ("runs", RUNS_SCHEMA)]:
        delta = DeltaTable(str(out / table))                          # a Delta table: data files and a commit log
        partitions = ["date"] if table == "runs" else ["date", "source"]
        assert delta.metadata().partition_columns == partitions
        for path in delta.file_uris():
            assert pq.read_schema(path).remove_metadata() == schema, path
    video_files = sorted(p.relative_to(out).as_posix() for p in (out / "videos").rglob("*.parquet"))
    assert [f.rsplit("/", 1)[0] for f in video_files] == [       # one file per partition, nothing beside them
        "videos/date=2026-01-02/source=cam1", "videos/date=2026-01-02/source=cam2"]

    frames = DeltaTable(str(out / "frames")).to_pandas()
    assert {"date", "source"} <= set(frames.columns) and len(frames) == summary.people
    runs = pd.read_parquet(out / "runs")
    assert runs.loc[0, "frames"] == 16 and runs.loc[0, "videos_failed"] == 1 and runs.loc[0, "status"] == "partial"
    # start-up (Ray, actors, the model) apart from processing: the rate is over the processing only
    assert 0 < runs.loc[0, "startup_seconds"] < runs.loc[0, "seconds"]
    processing = runs.loc[0, "seconds"] - runs.loc[0, "startup_seconds"]
    if processing >= MIN_RATE_SECONDS:
        assert runs.loc[0, "frames_per_second"] == pytest.approx(16 / processing)
    else:                                                             # a batch more or less would swing the rate
        assert pd.isna(runs.loc[0, "frames_per_second"]) and summary.frames_per_second is None

    errors = duckdb.sql(f"SELECT uri, stage, error_type, message, source FROM read_parquet("
                        f"'{out}/errors/**/*.parquet', hive_partitioning=true)").df()
    assert len(errors) == 1 and errors.loc[0, "uri"].endswith("broken.mp4") and errors.loc[0, "source"] == "cam2"
    assert errors.loc[0, "stage"] == "open" and errors.loc[0, "message"]
    count = connect(str(out)).execute("SELECT count(*) FROM frames WHERE date = '2026-01-02'").fetchall()[0][0]
    assert count == summary.people

    # every listed video in `videos`, whatever came of it: the broken one, and one without people in it
    videos = connect(str(out)).execute("SELECT * FROM videos ORDER BY uri").df()
    assert [uri.rsplit("/", 1)[1] for uri in videos["uri"]] == ["walk.mp4", "broken.mp4", "wide.mkv"]
    assert videos["status"].tolist() == ["ok", "failed", "ok"] and (videos["run_id"] == summary.run_id).all()
    assert videos["source"].tolist() == ["cam1", "cam2", "cam2"]
    walk, broken, wide = (videos.iloc[i] for i in range(3))
    assert (walk.frames, walk.width, walk.height, walk.fps) == (10, 160, 120, 12.0)
    assert walk.duration_s == pytest.approx(20 / 12) and (wide.width, wide.height, wide.frames) == (200, 80, 6)
    assert videos["people"].sum() == summary.people and videos["tracks"].sum() == summary.tracks
    assert broken.error.startswith("open: ") and pd.isna(broken.fps)
    assert pd.isna(walk.error) and videos.loc[videos.status == "ok", "error"].isna().all()

    # a rerun skips the unchanged videos and retries the broken one, whose rows it replaces
    again = run(config_for(archive, random_checkpoint, "--set", "decode.every_nth=2"))
    assert (again.videos_listed, again.videos_skipped, again.videos_failed) == (3, 2, 1)
    con = connect(str(out))
    latest = con.execute("SELECT uri, status, run_id, frames FROM videos ORDER BY uri").df()
    assert latest["status"].tolist() == ["ok", "failed", "ok"]
    assert latest["run_id"].tolist() == [summary.run_id, again.run_id, summary.run_id]
    assert con.execute("SELECT run_id FROM errors").fetchall() == [(again.run_id,)]
    assert con.execute("SELECT count(*) FROM frames").fetchall() == [(summary.people,)]
    assert pd.read_parquet(out / "errors")["run_id"].tolist() == [again.run_id]   # plain readers: current rows only


def test_missing_input_fails_fast_with_a_clear_message(tmp_path, random_checkpoint, capsys):
    code = main(["--input", str(tmp_path / "nope"), "--output", str(tmp_path / "out"),
                 "--set", f"model.checkpoint={random_checkpoint}"])
    assert code == EXIT_USAGE
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_missing_checkpoint_and_bad_override_fail_fast(tmp_path, capsys):
    encode_video(tmp_path / "in" / "a.mp4", num_frames=2)
    base = ["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out")]
    assert main(base + ["--set", f"model.checkpoint={tmp_path / 'none.pt'}"]) == EXIT_USAGE
    assert "model.checkpoint" in capsys.readouterr().err
    assert main(base + ["--set", "decode.fsp=3"]) == EXIT_USAGE
    assert "decode.fsp: unknown key" in capsys.readouterr().err


@pytest.mark.slow
def test_a_long_video_streams_through_in_batch_sized_blocks(ray_local, tmp_path, random_checkpoint):
    """Ray Data would merge a generator's yields into 128 MiB blocks: a long video must not become one block."""
    import re

    from pipeline.stages.incremental import refs_table
    from pipeline.stages.plan import build_dataset
    from pipeline.stages.read import list_videos

    encode_video(tmp_path / "in" / "long.mp4", num_frames=120, width=160, height=120)
    config = config_for(tmp_path, random_checkpoint, "--set", "decode.batch_size=16")
    ds = build_dataset(refs_table(list_videos(str(tmp_path / "in"))), config, input_size=128)
    rows = sum(len(b["frame_index"]) for b in ds.iter_batches(batch_format="numpy", batch_size=None))
    assert rows == 121                                  # 120 frames (one row each: nobody found) + the end marker
    decode_stats = next(s for s in ds.stats().split("Operator")[1:] if "FrameDecoder" in s)
    blocks = int(re.search(r"(\d+) blocks produced", decode_stats).group(1))
    assert blocks >= 120 // 16 // 2                     # a block: at most two of these 0.8 MB batches (BLOCK_BYTES)


@pytest.mark.slow
def test_embedded_ray_keeps_a_write_worker_between_waves():
    """Ray ends idle workers after 1 s once a node has more workers than CPUs (actors count), so every write wave
    started a new process and imported the write stage again; the embedded Ray `posepipe run` starts keeps them for
    write.commit_seconds. Own process: the tests' shared Ray is not started by `init_ray`."""
    import subprocess
    import sys

    script = """
import os, time, ray
from pipeline.config import RunConfig
from pipeline.stages.plan import init_ray
init_ray(RunConfig.model_validate({"ray": {"num_cpus": 2}}), verbose=False)
@ray.remote(num_cpus=0.5)
class Busy:
    def ready(self): return True
actors = [Busy.remote() for _ in range(3)]          # more workers than CPUs, as the decode and inference actors make
ray.get([actor.ready.remote() for actor in actors])
@ray.remote(num_cpus=0.25)
def wave():
    return os.getpid()
pids = []
for _ in range(3):
    pids.append(ray.get(wave.remote()))
    time.sleep(2.5)                                     # longer than Ray's default 1 s, shorter than commit_seconds
print(len(set(pids)))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-1] == "1"
