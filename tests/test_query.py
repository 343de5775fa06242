"""Query side of the outputs: Delta tables read by deltalake, pandas, pyarrow and DuckDB; plain Parquet readers of the
folders; `pipeline.outputs.query` views (local, S3 via moto), `to_long`, COCO export scored by pycocotools,
`posepipe query`, and the recipes of docs/tables.md run verbatim."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import re
import shlex
from pathlib import Path

import av
import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pds
import pyarrow.parquet as pq
import pytest

from pipeline.outputs.query import connect, keypoint_array, query, to_long
from pipeline.outputs.schema import TABLES
from pipeline.outputs.tables import delta_schema
from pipeline.pose.keypoints import KEYPOINT_INDEX, KEYPOINT_NAMES, NUM_KEYPOINTS
from pipeline.pose.tracking import UNTRACKED
from pipeline.stages.assemble import TrackedVideo
from pipeline.stages.write import WaveContext, write_run_row, write_videos_now

from conftest import s3_server

RECIPES = Path(__file__).resolve().parent.parent / "docs" / "tables.md"   # query recipes with known answers
DATE = "2026-03-04"
RUN = "20260304T100000Z-run001"
W, H, FPS = 320, 240, 10
# A standing person, 160 px tall, feet at y = 200 (offsets from the x of their centre line).
STANDING = np.array([[0, 40], [-5, 35], [5, 35], [-10, 37], [10, 37], [-20, 55], [20, 55], [-25, 80], [25, 80],
                     [-27, 105], [27, 105], [-12, 110], [12, 110], [-12, 150], [12, 150], [-12, 190], [12, 190]],
                    np.float32)


def person(centre_x: float, raise_right: bool = False) -> np.ndarray:
    """(K, 3) keypoints [x, y, score] of a standing person; `raise_right` lifts the right wrist above the head."""
    kp = np.concatenate([STANDING + [centre_x, 0.0], np.full((NUM_KEYPOINTS, 1), 0.9, np.float32)], axis=1)
    if raise_right:
        kp[KEYPOINT_INDEX["right_elbow"], :2] = [centre_x + 30, 40]
        kp[KEYPOINT_INDEX["right_wrist"], :2] = [centre_x + 32, 15]
    return kp


def scene_people(t: int) -> tuple[np.ndarray, np.ndarray]:
    """Video `walk`: track 0 walks right and never raises a hand; track 1 raises its right hand from frame 20; both
    are gone from frame 35 on. In frames 10 and 11 an untracked upper body with a raised hand (a fragment) is seen
    too: no one's track, so it must not count as a person. Returns keypoints (P, K, 3) and track ids (P,)."""
    if t >= 35:
        return np.zeros((0, NUM_KEYPOINTS, 3), np.float32), np.zeros(0, np.int64)
    a = person(60 + 2 * t)
    a[KEYPOINT_INDEX["left_ear"]] = [np.nan, np.nan, 0.0]                   # never found
    people, ids = [a, person(240, raise_right=t >= 20)], [0, 1]
    if t in (10, 11):
        fragment = person(290, raise_right=True)
        fragment[KEYPOINT_INDEX["left_hip"]:] = [np.nan, np.nan, 0.0]
        people, ids = people + [fragment], ids + [UNTRACKED]
    return np.stack(people), np.array(ids)


def encode(path: Path, num_frames: int, people_at) -> Path:
    """A real mp4: smooth background, each person's keypoints painted as light squares."""
    path.parent.mkdir(parents=True, exist_ok=True)
    background = (np.linspace(30, 110, W)[None, :, None] + np.linspace(0, 60, H)[:, None, None]).astype(np.uint8)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        for t in range(num_frames):
            image = np.repeat(background, 3, axis=2)
            for kp in people_at(t)[0]:
                for x, y, s in kp:
                    if s > 0:
                        image[int(y) - 2:int(y) + 3, int(x) - 2:int(x) + 3] = 210
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def tracked(num_frames: int, people_at) -> TrackedVideo:
    frames = []
    for t in range(num_frames):
        kp, ids = people_at(t)
        frames.append((t, t / FPS, W, H, ids, np.linspace(0.95, 0.8, len(ids)).astype(np.float32), kp))
    return TrackedVideo.from_frames(frames)


def context(root: str, storage_options: dict | None = None, run_id: str = RUN) -> WaveContext:
    import datetime as dt

    return WaveContext(root, run_id, dt.date.fromisoformat(DATE), "test", storage_options=storage_options or {})


def write_output(root: str, videos: Path | None = None, storage_options: dict | None = None) -> dict:
    """An output root written by the real writer: video `walk` (source cam1, 40 frames, 2 tracks, track 1 raises a
    hand), video `still` (source "01", 12 frames, 1 track), a video that failed to open, a runs row. With `videos`,
    the mp4s are encoded there and the rows point at them."""
    still_people = lambda t: (person(160)[None], np.array([0]))  # noqa: E731
    refs, written = {}, []
    for name, source, n, people_at in [("walk", "cam1", 40, scene_people), ("still", "01", 12, still_people)]:
        uri = str(encode(videos / source / f"{name}.mp4", n, people_at)) if videos else f"/videos/{source}/{name}.mp4"
        refs[name] = {"video_id": f"{name}-0123456789", "uri": uri, "source": source, "size": 1, "version": "1"}
        written.append((refs[name], tracked(n, people_at)))
    broken = {"video_id": "broken-0123456789", "uri": "/videos/cam1/broken.mp4", "source": "cam1", "size": 64,
              "version": "1"}
    written.append((broken, TrackedVideo.from_frames([])))
    write_videos_now(context(root, storage_options), written,
                     errors={broken["video_id"]: "open|InvalidDataError|cannot open video"})
    now = pd.Timestamp("2026-03-04T10:00:00Z")
    write_run_row(context(root, storage_options), {
        "run_id": RUN, "status": "partial", "started_at": now, "finished_at": now, "input": "/videos",
        "config_hash": "abc", "config_json": "{}", "code_version": "test", "videos_listed": 3, "videos_ok": 2,
        "videos_failed": 1, "videos_skipped": 0, "frames": 52, "people": 84, "tracks": 3, "seconds": 1.0,
        "startup_seconds": 0.5, "frames_per_second": 104.0})
    return refs


def tracked_from_ground_truth(gt: dict) -> TrackedVideo:
    """What a perfect model plus tracker would give for a synthetic video (`pipeline.synthetic.videos` sidecar)."""
    return TrackedVideo.from_frames(ground_truth_frames(gt))


def ground_truth_frames(gt: dict) -> list[tuple]:
    """Per frame of a synthetic video's sidecar, (frame_index, timestamp_s, width, height, track ids, scores,
    keypoints) as a perfect model plus tracker would give them: visible keypoints (v = 2) scored 0.9, hidden ones
    (v = 1) 0.5, those outside the frame (v = 0) not found."""
    frames = []
    for frame in gt["frames"]:
        people = frame["people"]
        kp = np.array([p["keypoints"] for p in people], np.float32).reshape(len(people), NUM_KEYPOINTS, 3)
        kp[..., 2] = np.select([kp[..., 2] == 2, kp[..., 2] == 1], [0.9, 0.5], 0.0)
        kp[kp[..., 2] == 0, :2] = np.nan
        frames.append((frame["frame_index"], frame["timestamp_s"], gt["width"], gt["height"],
                       np.array([p["track_id"] for p in people], np.int64), np.full(len(people), 0.9, np.float32), kp))
    return frames


def write_synthetic_output(root: Path, videos: Path, **video_kw) -> tuple[dict, dict]:
    """One synthetic video (pipeline.synthetic.videos) listed by the real reader and written by the real writer
    from its ground truth. Returns (ref, ground truth)."""
    from pipeline.stages.read import list_videos
    from pipeline.synthetic.videos import write_video

    gt_path = write_video(videos / "cam1" / "synthetic.mp4", supersample=1, **video_kw)
    gt = json.loads(gt_path.read_text())
    [ref] = list_videos(str(videos))
    write_videos_now(context(str(root)), [(ref, tracked_from_ground_truth(gt))])
    return ref, gt


PERSON_ROWS = 35 * 2 + 2 + 12      # walk: 2 people in frames 0..34 and a fragment in 10, 11; still: 1 person in 12


@pytest.fixture
def output(tmp_path) -> Path:
    write_output(str(tmp_path / "out"))
    return tmp_path / "out"


# --- the files themselves -------------------------------------------------------------------------------------------

PLAIN_TYPES = (pa.types.is_string, pa.types.is_int32, pa.types.is_int64, pa.types.is_float32, pa.types.is_float64,
               pa.types.is_timestamp)


def test_tables_are_delta_tables_of_plain_parquet_in_hive_layout(output):
    from deltalake import DeltaTable

    for table, schema in TABLES.items():
        delta = DeltaTable(str(output / table))
        assert delta.metadata().partition_columns == (["date"] if table == "runs" else ["date", "source"])
        assert [f.name for f in delta.schema().fields] == delta_schema(table).names
    files = sorted(p.relative_to(output).as_posix() for p in output.rglob("*.parquet"))
    layout = [re.sub(r"part-[\w-]+\.zstd\.parquet$", "part-*.parquet", f) for f in files]
    assert layout == [f"errors/date={DATE}/source=cam1/part-*.parquet",
                      f"frames/date={DATE}/source=01/part-*.parquet", f"frames/date={DATE}/source=cam1/part-*.parquet",
                      f"runs/date={DATE}/part-*.parquet",
                      f"tracks/date={DATE}/source=01/part-*.parquet", f"tracks/date={DATE}/source=cam1/part-*.parquet",
                      f"videos/date={DATE}/source=01/part-*.parquet", f"videos/date={DATE}/source=cam1/part-*.parquet"]
    assert all(RUN in f for f in files)                              # a data file names the run that wrote it
    for path in output.rglob("*.parquet"):
        schema = pq.read_schema(path)
        assert schema.remove_metadata() == TABLES[path.relative_to(output).parts[0]], path
        assert all(any(is_type(f.type) for is_type in PLAIN_TYPES) for f in schema), path   # no extension types
        assert "date" not in schema.names and "source" not in schema.names              # partitions: paths only


def test_deltalake_pandas_pyarrow_and_duckdb_read_the_same_rows(output):
    from deltalake import DeltaTable

    frames = DeltaTable(str(output / "frames")).to_pandas()          # the current snapshot, through the log
    assert len(frames) == PERSON_ROWS
    assert frames["nose_x"].dtype == np.float32 and frames["track_id"].dtype == np.int64
    assert set(frames["source"]) == {"cam1", "01"}                   # strings, typed by the log
    assert frames["left_ear_x"].isna().sum() == 35 and (frames["left_ear_score"] == 0).sum() == 35

    plain = pd.read_parquet(output / "frames")                       # a plain reader of the folder: the same rows
    assert len(plain) == PERSON_ROWS                                 # (_delta_log is skipped, as every "_" folder)
    dataset = pds.dataset(output / "tracks", format="parquet", partitioning="hive")
    tracks = dataset.to_table().to_pandas()
    assert len(tracks) == 3 and sorted(tracks["num_frames"]) == [12, 35, 35]

    counts = duckdb.sql(f"SELECT source, count(*) AS n FROM read_parquet('{output}/frames/**/*.parquet', "
                        f"hive_partitioning = true, hive_types = {{'date': DATE, 'source': VARCHAR}}) "
                        f"GROUP BY source ORDER BY source").fetchall()
    assert counts == [("01", 12), ("cam1", 72)]
    runs = duckdb.sql(f"SELECT typeof(started_at), date FROM read_parquet('{output}/runs/**/*.parquet', "
                      f"hive_partitioning = true)").fetchall()
    assert runs == [("TIMESTAMP WITH TIME ZONE", pd.Timestamp(DATE).date())]


# --- pipeline.outputs.query -------------------------------------------------------------------------------------------------

def check_views(con: duckdb.DuckDBPyConnection) -> None:
    assert query(con, "SELECT count(*) AS n FROM frames")["n"][0] == PERSON_ROWS
    by_source = query(con, "SELECT source, typeof(source) AS t, typeof(date) AS d, count(DISTINCT (video_id, "
                           "track_id)) AS people FROM frames WHERE track_id >= 0 GROUP BY ALL ORDER BY source")
    assert by_source.values.tolist() == [["01", "VARCHAR", "DATE", 1], ["cam1", "VARCHAR", "DATE", 2]]
    assert query(con, "SELECT stage FROM errors")["stage"].tolist() == ["open"]
    assert query(con, "SELECT videos_failed FROM runs")["videos_failed"].tolist() == [1]


def test_views_over_a_local_root(output):
    check_views(connect(str(output)))


@pytest.fixture
def s3_endpoint():
    with s3_server() as endpoint:
        yield endpoint


def test_views_over_s3_through_fsspec_without_httpfs(s3_endpoint):
    import boto3

    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket="posepipe-results")
    options = {"endpoint_url": s3_endpoint}
    write_output("s3://posepipe-results/out", storage_options=options)
    check_views(connect("s3://posepipe-results/out", options))


def test_missing_tables_are_empty_views_with_the_schema_columns(tmp_path):
    root = tmp_path / "out"
    write_videos_now(context(str(root)), [({"video_id": "v", "uri": "/v.mp4", "source": "123"},
                                           tracked(3, scene_people))])
    assert (root / "errors" / "_delta_log").is_dir() and not (root / "runs").exists()   # empty / never written
    con = connect(str(root))
    assert query(con, "SELECT DISTINCT source FROM frames")["source"].tolist() == ["123"]   # not the integer 123
    for table in ("errors", "runs"):
        described = query(con, f"DESCRIBE {table}")
        assert described["column_name"].tolist() == delta_schema(table).names
        assert query(con, f"SELECT count(*) AS n FROM {table}")["n"][0] == 0
    assert query(con, "DESCRIBE errors").set_index("column_name").loc["source", "column_type"] == "VARCHAR"
    # an empty view has the same columns and types as a view over files
    written = query(con, "DESCRIBE frames")[["column_name", "column_type"]]
    con.register("_probe", delta_schema("frames").empty_table())
    assert query(con, "DESCRIBE _probe")[["column_name", "column_type"]].equals(written)
    (tmp_path / "empty").mkdir()
    nothing = connect(str(tmp_path / "empty"))
    assert query(nothing, "SELECT count(*) AS n FROM videos")["n"][0] == 0
    with pytest.raises(FileNotFoundError, match="does not exist"):   # a mistyped path is not an empty output
        connect(str(tmp_path / "never-written"))


def test_to_long_has_one_row_per_keypoint(output):
    frames = query(connect(str(output)), "SELECT * FROM frames WHERE source = 'cam1' ORDER BY frame_index, track_id")
    long = to_long(frames)
    assert list(long.columns) == ["video_id", "frame_index", "track_id", "keypoint", "x", "y", "score"]
    assert len(long) == len(frames) * NUM_KEYPOINTS
    assert list(long["keypoint"].cat.categories) == list(KEYPOINT_NAMES) and long["keypoint"].cat.ordered
    row = long[(long.frame_index == 25) & (long.track_id == 1) & (long.keypoint == "right_wrist")].iloc[0]
    assert (row.x, row.y, row.score) == pytest.approx((272.0, 15.0, 0.9))
    ears = long[long.keypoint == "left_ear"]
    assert ears[ears.track_id == 0][["x", "y"]].isna().all().all() and (ears[ears.track_id == 0].score == 0).all()
    np.testing.assert_array_equal(keypoint_array(frames).reshape(-1, 3), long[["x", "y", "score"]].to_numpy())
    with pytest.raises(ValueError, match="track_id"):
        to_long(frames.drop(columns=["track_id"]))


# --- COCO export ------------------------------------------------------------------------------------------------------

def ground_truth(video: TrackedVideo) -> dict:
    """COCO keypoint ground truth of the same video: image id = frame index, visibility 2 where found."""
    images, annotations = [], []
    for frame in np.unique(video.frame_index):
        rows = video.frame_index == frame
        width, height = int(video.width[rows][0]), int(video.height[rows][0])
        images.append({"id": int(frame), "width": width, "height": height, "file_name": f"{frame}.jpg"})
        for kp in video.keypoints[rows]:
            found = kp[:, 2] > 0
            coco = np.where(found[:, None], np.c_[kp[:, :2], np.full(len(kp), 2.0)], 0.0)
            x0, y0 = kp[found, :2].min(0)
            x1, y1 = kp[found, :2].max(0)
            annotations.append({"id": len(annotations) + 1, "image_id": int(frame), "category_id": 1,
                                "keypoints": coco.reshape(-1).tolist(), "num_keypoints": int(found.sum()),
                                "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
                                "area": float((x1 - x0) * (y1 - y0)), "iscrowd": 0})
    from pipeline.pose.keypoints import coco_person_category
    return {"images": images, "annotations": annotations, "categories": [coco_person_category()]}


def coco_ap(gt: dict, results: list[dict]) -> tuple[float, int]:
    """OKS AP of results loaded with pycocotools' loadRes (through JSON, as a file would go); and how many loaded."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(gt)
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(json.loads(json.dumps(results)))
        evaluator = COCOeval(coco_gt, coco_dt, iouType="keypoints")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return float(evaluator.stats[0]), len(coco_dt.getAnnIds())


def test_coco_results_load_in_pycocotools_and_score_perfectly(output):
    from pipeline.outputs.coco_export import video_results

    results = video_results(str(output), "walk-0123456789")
    assert len(results) == 72 and {r["category_id"] for r in results} == {1}
    first = results[0]
    assert first["image_id"] == 0 and first["track_id"] == 0 and first["score"] == pytest.approx(0.95)
    assert len(first["keypoints"]) == 3 * NUM_KEYPOINTS
    assert first["keypoints"][3 * KEYPOINT_INDEX["left_ear"]:3 * KEYPOINT_INDEX["left_ear"] + 3] == [0, 0, 0]
    assert first["keypoints"][:3] == pytest.approx([60.0, 40.0, 0.9])

    gt = ground_truth(tracked(40, scene_people))
    ap, loaded = coco_ap(gt, results)
    assert loaded == 72 and ap == pytest.approx(1.0)                 # results equal to the truth: AP 1
    moved = copy.deepcopy(results)
    for r in moved:                                                  # shift found keypoints by 20 px: AP drops
        kp = np.array(r["keypoints"]).reshape(-1, 3)
        kp[kp[:, 2] > 0, :2] += 20
        r["keypoints"] = kp.reshape(-1).tolist()
    assert coco_ap(gt, moved)[0] < 0.5
    with pytest.raises(KeyError, match="not in the output"):
        video_results(str(output), "nope")


def test_coco_results_score_perfectly_against_a_synthetic_videos_ground_truth(tmp_path):
    from pipeline.outputs.coco_export import video_results
    from pipeline.synthetic.videos import video_ground_truth_to_coco

    ref, gt = write_synthetic_output(tmp_path / "out", tmp_path / "videos", seed=5, num_frames=10, fps=10.0,
                                     scenario="cross", num_people=2)
    coco_gt = video_ground_truth_to_coco(gt)                          # numbers its images frame_index + 1
    results = video_results(str(tmp_path / "out"), ref["video_id"], image_id_offset=1)
    people = sum(len(f["people"]) for f in gt["frames"])
    assert people > 0 and len(results) == people
    ap, loaded = coco_ap(coco_gt, results)
    assert loaded == people and ap == pytest.approx(1.0)


# --- posepipe query ---------------------------------------------------------------------------------------------------

def run_query(capsys, *argv) -> tuple[int, str, str]:
    from jobs.query import main

    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_query_command(output, capsys):
    code, out, _ = run_query(capsys, str(output), "--tables")
    assert code == 0 and re.search(r"frames\s+84\s+66", out) and re.search(r"errors\s+1\s+10", out)
    assert re.search(r"videos\s+3\s+18", out)
    code, out, _ = run_query(capsys, str(output), "--csv", "SELECT source, count(*) AS n FROM frames "
                                                           "GROUP BY ALL ORDER BY ALL")
    assert code == 0 and out.splitlines() == ["source,n", "01,12", "cam1,72"]
    code, out, _ = run_query(capsys, str(output), "--max-rows", "3", "SELECT * FROM tracks")
    assert code == 0 and "... 0 more rows" not in out and len(out.splitlines()) == 4   # header + 3 rows
    code, out, _ = run_query(capsys, str(output), "--max-rows", "2", "SELECT * FROM tracks")
    assert "1 more rows" in out
    code, _, err = run_query(capsys, str(output), "SELECT nope FROM frames")
    assert code == 2 and "nope" in err
    code, _, err = run_query(capsys, str(output.parent / "typo"), "--tables")
    assert code == 2 and "does not exist" in err
    code, _, err = run_query(capsys, str(output), "--coco", "nope")
    assert code == 2 and "not in the output" in err
    code, out, _ = run_query(capsys, str(output), "--coco", "still-0123456789")
    assert code == 0 and len(json.loads(out)) == 12


# --- docs/tables.md recipes, run verbatim -------------------------------------------------------------------------

def code_blocks(path: str | Path, language: str, section: str | None = None) -> list[str]:
    """The fenced ```language blocks of a Markdown file (of one `## section` when given), in order."""
    text = Path(path).read_text()
    if section:
        text = text.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    return [m.group(1) for m in re.finditer(rf"^```{language}\n(.*?)^```", text, re.S | re.M)]


def shell_commands(block: str) -> list[str]:
    """Commands of a sh block: comments dropped, backslash continuations joined."""
    commands, current = [], ""
    for line in block.splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        current += line.rstrip("\\").rstrip() + " " if line.endswith("\\") else line
        if not line.endswith("\\"):
            commands.append(current.strip())
            current = ""
    return commands


def run_posepipe(command: str) -> int:
    """`posepipe NAME args` -> jobs.NAME.main(args), as jobs/cli.py dispatches; comments after '#' dropped."""
    from jobs.cli import main

    argv = shlex.split(command, comments=True)
    assert argv[0] == "posepipe", command
    return main(argv[1:])


@pytest.fixture
def recipes_output(tmp_path, monkeypatch):
    """The working directory of the recipes: `out/` holds a run's tables, the videos they point at exist."""
    refs = write_output(str(tmp_path / "out"), videos=tmp_path / "videos")
    monkeypatch.chdir(tmp_path)
    return refs


def test_python_recipes_run_and_answer_right(recipes_output, capsys):
    blocks = code_blocks(RECIPES, "python", "Querying the results")
    assert len(blocks) == 4
    spaces = []
    for block in blocks:
        namespace: dict = {"__name__": "recipes"}
        exec(compile(block, str(RECIPES), "exec"), namespace)
        spaces.append(namespace)
    pandas_ns, plain_ns, duckdb_ns, query_ns = spaces
    assert pandas_ns["people_per_source"].to_dict() == {"01": 1, "cam1": 2}
    assert len(pandas_ns["frames"]) == len(plain_ns["plain_frames"]) == PERSON_ROWS
    assert pandas_ns["mean_score_per_keypoint"].index.tolist() == list(KEYPOINT_NAMES)
    raised = duckdb_ns["raised"]
    assert raised[["video_id", "track_id", "frames_raised"]].values.tolist() == [["walk-0123456789", 1, 15]]
    assert raised["first_raised_s"][0] == pytest.approx(2.0)
    assert query_ns["per_hour"].values.tolist() == [["01", 0, 1], ["cam1", 0, 2]]
    assert query_ns["failed"]["stage"].tolist() == ["open"]
    assert "walk-0123456789" in capsys.readouterr().out


def test_shell_recipes_run(recipes_output, capsys):
    blocks = code_blocks(RECIPES, "sh", "Querying the results") + code_blocks(RECIPES, "sh", "Looking at the results")
    commands = [c for block in blocks for c in shell_commands(block)]
    assert len(commands) == 7
    video_id = recipes_output["walk"]["video_id"]
    outputs = []
    for command in commands:
        assert run_posepipe(command.replace("VIDEO_ID", video_id)) == 0, command
        outputs.append(capsys.readouterr().out)
    assert "walk-0123456789,1,15" in outputs[2]                      # the hand-raising track, as CSV
    assert re.search(r"cam1\s+0\s+2", outputs[1])
    assert len(json.loads(Path("results.json").read_text())) == 72
    with av.open("clip.mp4") as clip:
        assert sum(1 for _ in clip.decode(video=0)) == 40
    assert Path("sheet.png").stat().st_size > 0 and Path("summary.png").stat().st_size > 0
