"""The main job with input, checkpoint and output on S3 (moto's server on 127.0.0.1), read back with deltalake, pandas
and DuckDB.

Random weights find no real people, so the grouping thresholds are opened wide (LAX_GROUPING): every frame then
yields "people" and the frames and tracks tables hold rows to count. The tests that run the job through Ray are
marked slow (about 20 s a run on 2 cores); the fail-fast ones are not.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
from types import SimpleNamespace

import boto3
import duckdb
import pandas as pd
import pyarrow.parquet as pq
import pytest
import ray
import s3fs
from deltalake import DeltaTable

from jobs.run import EXIT_PARTIAL, EXIT_USAGE, load_run_config, main, parse_args, run
from pipeline.models.bottomup import ModelConfig, PoseNet
from pipeline.models.checkpoint import checkpoint_metadata, save_checkpoint
from pipeline.outputs.query import connect
from pipeline.outputs.schema import ERRORS_SCHEMA, FRAMES_SCHEMA, RUNS_SCHEMA, TRACKS_SCHEMA, VIDEOS_SCHEMA
from pipeline.storage import resolve

from conftest import encode_video, s3_server

BUCKET = "archive"
KEY_ID, SECRET = "AKIAPOSEPIPETEST0001", "env-secret-9f3Kq7Zt"          # the standard chain: environment
KEY_ID_2, SECRET_2 = "AKIAPOSEPIPETEST0002", "options-secret-4Wm2Xp"    # put in storage_options by a careless user
LAX_GROUPING = ["grouping.peak_threshold=0", "grouping.alignment_threshold=-10", "grouping.min_aligned_fraction=0",
                "grouping.min_limb_score=-10", "grouping.min_keypoints=1", "grouping.min_person_score=0"]


def args_for(*extra: str) -> list[str]:
    sets = [f"model.checkpoint=s3://{BUCKET}/models/random.pt", "decode.batch_size=4", "model.batch_size=4",
            *LAX_GROUPING]
    return ["--input", f"s3://{BUCKET}/videos", "--output", f"s3://{BUCKET}/out",
            *[a for s in sets for a in ("--set", s)], *extra]


def upload_video(client, tmp_path, key: str, num_frames: int = 6) -> None:
    path = encode_video(tmp_path / key, num_frames=num_frames, width=64, height=48)
    client.upload_file(str(path), BUCKET, key)


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A moto S3 server with an archive of two real videos and a broken one, and a random-weights checkpoint."""
    with s3_server(KEY_ID, SECRET, endpoint_in_env=True) as endpoint:      # the endpoint reaches every process
        ray.shutdown()  # Ray workers inherit the environment Ray starts with: restart it after setting the chain
        tmp = tmp_path_factory.mktemp("s3")
        client = boto3.client("s3", endpoint_url=endpoint)
        client.create_bucket(Bucket=BUCKET)
        for key in ("videos/cam0/walk.mp4", "videos/cam1/turn.mp4"):
            upload_video(client, tmp, key)
        client.put_object(Bucket=BUCKET, Key="videos/cam1/broken.mp4", Body=b"\x00" * 100)
        config = ModelConfig(input_size=64, width=8, feature_channels=16, head_channels=8)
        save_checkpoint(PoseNet(config), f"s3://{BUCKET}/models/random.pt", checkpoint_metadata(config))
        yield SimpleNamespace(endpoint=endpoint, client=client, tmp=tmp)
        ray.shutdown()  # do not leave a Ray holding these credentials to later test modules


def reader_options(s3) -> dict:
    """How a reader in a long-lived process reaches the outputs: s3fs's listing cache off, or files written after
    its first read stay invisible to it (pyarrow checks `isfile` against that cache)."""
    return {"endpoint_url": s3.endpoint, "use_listings_cache": False}


def objects(client, prefix: str = "") -> dict[str, bytes]:
    keys = [o["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
            for o in page.get("Contents", [])]
    return {key: client.get_object(Bucket=BUCKET, Key=key)["Body"].read() for key in keys}


@contextlib.contextmanager
def captured_output():
    """Everything the driver logs at INFO (the job's level) or prints, as one string (filled in when the block ends)."""
    text, stream, root = [], io.StringIO(), logging.getLogger()
    handler, level = logging.StreamHandler(stream), root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        with contextlib.redirect_stdout(stream), contextlib.redirect_stderr(stream):
            yield text
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
        text.append(stream.getvalue())


@pytest.fixture(scope="module")
def first_run(s3):
    with captured_output() as out:
        code = main(args_for())
    return SimpleNamespace(code=code, log=out[0])


@pytest.fixture(scope="module")
def nightly_run(s3, first_run):
    """The next night: one new video; credentials this time given (wrongly) in storage_options."""
    upload_video(s3.client, s3.tmp, "videos/cam0/new.mp4", num_frames=4)
    args = args_for("--set", f"storage_options={{key: {KEY_ID_2}, secret: {SECRET_2}}}")
    with captured_output() as out:
        summary = run(load_run_config(parse_args(args)))
    return SimpleNamespace(summary=summary, log=out[0])


def test_missing_bucket_or_prefix_fails_before_any_work(s3, capsys):
    assert main(args_for() + ["--input", "s3://no-such-bucket/videos"]) == EXIT_USAGE
    assert "bucket 'no-such-bucket' is missing" in capsys.readouterr().err
    assert main(args_for() + ["--input", f"s3://{BUCKET}/no-such-prefix"]) == EXIT_USAGE
    assert f"'s3://{BUCKET}/no-such-prefix' does not exist" in capsys.readouterr().err
    assert main(args_for() + ["--output", "s3://no-such-bucket/out"]) == EXIT_USAGE
    assert "bucket 'no-such-bucket' does not exist" in capsys.readouterr().err
    assert not ray.is_initialized() and not objects(s3.client, "out/")


def test_endpoint_from_storage_options_wins_over_the_environment(s3, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    fs, path = resolve(f"s3://{BUCKET}/videos", {"endpoint_url": s3.endpoint})
    assert fs.exists(f"{path}/cam0/walk.mp4")


@pytest.mark.slow
def test_object_store_budget_reads_the_first_videos_header_from_s3(s3):
    import pyarrow as pa

    from pipeline.config import RunConfig
    from pipeline.stages.plan import transit_frame_bytes

    refs = pa.table({"uri": [f"s3://{BUCKET}/videos/cam0/walk.mp4"]})
    config = RunConfig.model_validate({"storage_options": {"endpoint_url": s3.endpoint}})
    assert transit_frame_bytes(refs, config, 1024, topdown=True) == 64 * 48 * 3


def test_run_on_s3_writes_delta_tables_that_deltalake_pandas_and_duckdb_read(s3, first_run):
    assert first_run.code == EXIT_PARTIAL                          # two videos ok, the broken one recorded
    written = objects(s3.client, "out/")
    assert all(len(data) > 0 and not key.endswith("/") for key, data in written.items())  # no directory markers
    for table, schema in [("frames", FRAMES_SCHEMA), ("tracks", TRACKS_SCHEMA), ("errors", ERRORS_SCHEMA),
                          ("videos", VIDEOS_SCHEMA), ("runs", RUNS_SCHEMA)]:
        assert f"out/{table}/_delta_log/{0:020d}.json" in written
        keys = [k for k in written if k.startswith(f"out/{table}/") and k.endswith(".parquet")]
        assert keys or table == "tracks"                  # random weights: people, but too few hits for a track
        assert all(pq.read_schema(io.BytesIO(written[k])).remove_metadata() == schema for k in keys)

    con = connect(f"s3://{BUCKET}/out", {"endpoint_url": s3.endpoint})   # the Delta snapshot, through deltalake
    runs = con.execute("SELECT * FROM runs").df()
    assert len(runs) == 1 and runs.loc[0, "videos_ok"] == 2 and runs.loc[0, "frames"] == 12
    frames = pd.read_parquet(f"s3://{BUCKET}/out/frames", storage_options=reader_options(s3))  # a plain reader
    assert len(frames) == runs.loc[0, "people"] > 0
    assert set(frames["source"]) == {"cam0", "cam1"} and frames["frame_index"].max() == 5

    plain = duckdb.connect()
    plain.register_filesystem(s3fs.S3FileSystem(endpoint_url=s3.endpoint))  # no httpfs download needed
    per_source = dict(plain.sql(f"SELECT source, count(*) FROM read_parquet('s3://{BUCKET}/out/frames/**/*.parquet', "
                                f"hive_partitioning=true) GROUP BY source").fetchall())
    assert per_source == frames.groupby("source", observed=True).size().to_dict() == dict(
        con.execute("SELECT source, count(*) FROM frames GROUP BY source").fetchall())
    errors = con.execute("SELECT uri, stage FROM errors").fetchall()
    assert errors == [(f"s3://{BUCKET}/videos/cam1/broken.mp4", "open")]


@pytest.mark.slow
def test_nightly_run_processes_only_new_and_failed_videos(s3, first_run, nightly_run):
    summary = nightly_run.summary
    assert (summary.videos_listed, summary.videos_skipped) == (4, 2)   # walk and turn are unchanged
    assert (summary.videos_ok, summary.videos_failed, summary.frames) == (1, 1, 4)  # new.mp4; broken is retried
    con = connect(f"s3://{BUCKET}/out", {"endpoint_url": s3.endpoint})
    runs = con.execute("SELECT run_id, people FROM runs ORDER BY started_at").fetchall()
    assert len(runs) == 2 and runs[1][0] == summary.run_id
    assert con.execute("SELECT count(*) FROM frames").fetchall() == [(runs[0][1] + runs[1][1],)]  # rows once each
    assert con.execute("SELECT run_id FROM errors").fetchall() == [(summary.run_id,)]   # the retry replaced it
    assert con.execute("SELECT count(*) FROM videos").fetchall() == [(4,)]
    history = DeltaTable(f"s3://{BUCKET}/out/frames", storage_options={
        "AWS_ENDPOINT_URL": s3.endpoint, "AWS_ALLOW_HTTP": "true"}).history()
    assert sum(json.loads(c.get("posepipe", "{}")).get("run_id") == summary.run_id for c in history) == 1  # batched


@pytest.mark.slow
def test_credentials_never_reach_outputs_or_logs(s3, first_run, nightly_run):
    secrets = [s.encode() for s in (KEY_ID, SECRET, KEY_ID_2, SECRET_2)]
    written = objects(s3.client, "out/")
    assert any("/_delta_log/" in key for key in written)            # the commit logs (their commit info) included
    leaks = [(key, s) for key, data in written.items() for s in secrets if s in data]
    assert not leaks
    for log in (first_run.log, nightly_run.log):
        assert "listed 4 videos" in log or "listed 3 videos" in log   # the capture did see the driver's logs
        assert not [s for s in secrets if s.decode() in log]
    runs = pd.read_parquet(f"s3://{BUCKET}/out/runs", storage_options=reader_options(s3))
    assert runs["config_json"].str.contains('"secret": "\\*\\*\\*"').sum() == 1
