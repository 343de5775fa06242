"""Reliability: bad videos, hangs, killed actors, a killed job and memory budgets lose nothing and stop nothing.

Fast tests drive `FrameDecoder` directly on inputs built with real tools (tests/faults.py). Slow tests run the main
job through the real local Ray and compare every good video's rows with a clean run's: a bad video must add
exactly one error row and change nothing else.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from deltalake import DeltaTable

from jobs.run import EXIT_USAGE, load_run_config, main, parse_args, run
from pipeline.config import ConfigError, RunConfig
from pipeline.pose.letterbox import Letterbox
from pipeline.stages.assemble import INDEX_COLUMNS, PendingVideos, collect_videos
from pipeline.stages.batch import PERSON_COLUMNS, empty
from pipeline.stages.decode import FrameDecoder
from pipeline.stages.plan import Pools, actor_memory, decode_cpus, fit_memory, plan_pools, transit_frame_bytes
from pipeline.stages.read import make_video_id

import faults
from conftest import encode_video

SIZE = 64
REPO = Path(__file__).resolve().parents[1]


# --- decoding bad inputs directly --------------------------------------------------------------------------------

def decode(path: str | Path, **kwargs) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """All frame rows of one video concatenated, and its end marker."""
    decoder = FrameDecoder(size=SIZE, batch_size=4, **kwargs)
    out = list(decoder.decode_video({"uri": str(path), "video_id": "v"}))
    marker = out[-1]
    assert marker["is_end"].tolist() == [True] and all(not b["is_end"].any() for b in out[:-1])
    rows = {key: np.concatenate([b[key] for b in out[:-1]]) for key in out[-1]} if len(out) > 1 else \
        {key: marker[key][:0] for key in marker}
    return rows, marker


def error_of(marker: dict[str, np.ndarray]) -> tuple[str, str, str]:
    stage, kind, message = str(marker["error"][0]).split("|", 2)
    return stage, kind, message


def bar_x(rows: dict[str, np.ndarray], i: int) -> float:
    """x of the bright bar in decoded frame i, in original-image pixels (letterbox undone)."""
    letterbox = Letterbox.fit(int(rows["width"][i]), int(rows["height"][i]), SIZE)
    row = rows["image"][i, letterbox.pad_y + letterbox.resized_height // 2, :, 1].astype(float)  # (S,) green
    bright = np.flatnonzero(row > 155)                         # the bar is 250, the background 60
    return float(letterbox.to_image(np.array([bright.mean(), 0.0]))[0])


OPEN_FAILURES = {  # builder -> (error type, words the message must hold)
    "zero-byte": (faults.write_zero_byte, "EmptyFile", "empty (0 bytes)"),
    "text named .mp4": (faults.write_text_file, "InvalidDataError", "cannot open as a video"),
    "truncated (index lost)": (faults.write_truncated, "InvalidDataError", "cannot open as a video"),
    "audio only": (lambda p: faults.write_audio_only(p), "NoVideoStream", "no video stream (streams found: audio)"),
    "unknown fourcc": (lambda p: faults.write_unknown_fourcc(p.with_suffix(".avi")), "UnsupportedCodec",
                       "no decoder"),
    "missing": (lambda p: p, "FileNotFound", "listed but is gone"),
    "dangling symlink": (faults.make_dangling_symlink, "FileNotFound", "symlink to the missing"),
    "directory": (lambda p: (p.mkdir(), p)[1], "IsADirectory", "is a directory"),
}


@pytest.mark.parametrize("name", OPEN_FAILURES)
def test_unopenable_inputs_end_with_one_clear_open_error(tmp_path, name):
    build, kind, words = OPEN_FAILURES[name]
    rows, marker = decode(build(tmp_path / "bad.mp4"))
    assert len(rows["frame_index"]) == 0 and marker["num_frames"][0] == 0
    assert error_of(marker)[:2] == ("open", kind)
    assert words in error_of(marker)[2]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads mode-000 files (CAP_DAC_OVERRIDE); the dangling "
                                              "symlink and directory cases cover unreadable paths as root")
def test_unreadable_file_is_an_open_error(tmp_path):
    path = encode_video(tmp_path / "locked.mp4", num_frames=4)
    path.chmod(0)
    _, marker = decode(path)
    assert error_of(marker)[0] == "open" and "ermission denied" in error_of(marker)[2]


def test_corrupt_frame_keeps_the_frames_before_and_after(tmp_path):
    path = faults.write_corrupt_frame(tmp_path / "disk.avi", num_frames=20, broken=(10,))
    rows, marker = decode(path)
    kept = [i for i in range(20) if i != 10]
    np.testing.assert_array_equal(rows["frame_index"], kept)
    assert marker["num_frames"][0] == 19
    stage, kind, message = error_of(marker)
    assert (stage, kind) == ("decode", "CorruptFrames") and "1 of 20" in message and "(frame 10)" in message
    for i, t in enumerate(kept):                       # the right frames, not neighbours repeated
        assert abs(bar_x(rows, i) - (4 * t + 3.5)) <= 3


def test_truncated_mp4_with_its_index_keeps_the_frames_that_are_there(tmp_path):
    """An interrupted copy of a faststart mp4: the index promises 24 frames, half the data is there; decord cannot
    open it at all (measured), PyAV decodes up to the cut."""
    rows, marker = decode(faults.write_truncated(tmp_path / "cut.mp4", num_frames=24, faststart=True))
    stage, kind, message = error_of(marker)
    assert (stage, kind) == ("decode", "MissingFrames") and "lists 24 frames" in message
    assert 6 <= marker["num_frames"][0] < 24 and marker["num_frames"][0] == len(rows["frame_index"])
    np.testing.assert_array_equal(rows["frame_index"], np.arange(len(rows["frame_index"])))


def test_header_that_overreports_frames_is_reported_and_every_real_frame_kept(tmp_path):
    """AVI headers claim 200 frames, the file holds 12 (idx1 removed): decord counts packets and decodes all 12
    without hanging (measured); the lie is one error row because it may as well be a truncation."""
    rows, marker = decode(faults.write_overreported_avi(tmp_path / "liar.avi", num_frames=12, claimed=200))
    np.testing.assert_array_equal(rows["frame_index"], np.arange(12))
    stage, kind, message = error_of(marker)
    assert (stage, kind) == ("decode", "MissingFrames") and "lists 200 frames but the file holds 12" in message


def test_codec_decord_cannot_open_is_decoded_with_pyav(tmp_path):
    rows, marker = decode(faults.write_av1(tmp_path / "new.mkv", num_frames=8))
    assert marker["error"][0] == "" and marker["num_frames"][0] == 8
    for i in range(8):
        assert abs(bar_x(rows, i) - (4 * i + 3.5)) <= 3


def test_variable_frame_rate_keeps_true_timestamps(tmp_path):
    times = [0.0, 0.05, 0.1, 0.4, 0.45, 1.0, 1.02, 1.5]
    rows, marker = decode(faults.write_vfr(tmp_path / "vfr.mp4", times))
    assert marker["error"][0] == ""
    np.testing.assert_array_equal(rows["frame_index"], np.arange(len(times)))
    np.testing.assert_allclose(rows["timestamp_s"], times, atol=2e-3)


@pytest.mark.parametrize("degrees,corner", [(90, "bottom-left"), (-90, "top-right"), (180, "bottom-right")])
def test_rotated_video_is_decoded_upright(tmp_path, degrees, corner):
    """The product reports keypoints in the displayed orientation: frames are turned as a player turns them.
    Stored 96x64 with a red square at the stored top-left; turned `degrees` counter-clockwise it lands at `corner`."""
    rows, marker = decode(faults.write_rotated(tmp_path / "phone.mp4", degrees, num_frames=6))
    assert marker["error"][0] == "" and marker["num_frames"][0] == 6
    width, height = (64, 96) if degrees % 180 else (96, 64)
    assert (rows["width"][0], rows["height"][0]) == (width, height)
    letterbox = Letterbox.fit(width, height, SIZE)
    image = rows["image"][0].astype(int)
    red = (image[..., 0] > 180) & (image[..., 1] < 110)                       # (S, S)
    v, u = np.argwhere(red).mean(axis=0)
    x, y = letterbox.to_image(np.array([u, v]))
    expected = {"bottom-left": (7.5, height - 8.5), "top-right": (width - 8.5, 7.5),
                "bottom-right": (width - 8.5, height - 8.5)}[corner]
    np.testing.assert_allclose((x, y), expected, atol=3)


@pytest.mark.parametrize("width,height,num_frames", [(16, 16, 6), (3840, 2160, 3)])
def test_very_small_and_very_large_frames(tmp_path, width, height, num_frames):
    rows, marker = decode(encode_video(tmp_path / "v.mp4", num_frames=num_frames, width=width, height=height))
    assert marker["error"][0] == "" and marker["num_frames"][0] == num_frames
    assert rows["image"].shape == (num_frames, SIZE, SIZE, 3)
    assert (rows["width"][0], rows["height"][0]) == (width, height)


# --- hangs ---------------------------------------------------------------------------------------------------

def release_fifo(path: Path) -> None:
    """Give a reader blocked on the FIFO its end of file, so an abandoned decoder thread can finish."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
    except OSError as exc:
        if exc.errno != errno.ENXIO:  # ENXIO: no reader left
            raise


@pytest.mark.timeout(60)
def test_decoder_that_never_returns_becomes_a_timeout(tmp_path):
    fifo = faults.make_fifo(tmp_path / "stalled.mp4")
    started = time.monotonic()
    rows, marker = decode(fifo, timeout_s=1.5)
    assert time.monotonic() - started < 10
    stage, kind, message = error_of(marker)
    assert (stage, kind) == ("open", "Timeout") and "decode.timeout_s=1.5" in message
    assert len(rows["frame_index"]) == 0 and marker["num_frames"][0] == 0
    stuck = FrameDecoder.abandoned[-1]
    assert stuck.is_alive()                                # really blocked in C, not a fake wait
    release_fifo(fifo)
    stuck.join(10)
    assert not stuck.is_alive()


@pytest.mark.timeout(60)
def test_time_spent_downstream_does_not_count_against_the_timeout(tmp_path):
    """A slow consumer (inference backpressure) holds each batch longer than the whole timeout: no Timeout."""
    path = encode_video(tmp_path / "v.mp4", num_frames=16)
    decoder = FrameDecoder(size=SIZE, batch_size=4, timeout_s=0.5)
    batches = []
    for batch in decoder.decode_video({"uri": str(path), "video_id": "v"}):
        batches.append(batch)
        time.sleep(0.3)
    assert batches[-1]["error"][0] == "" and batches[-1]["num_frames"][0] == 16


# --- replays after a retry -----------------------------------------------------------------------------------

def person_rows(video_id: str, frames: list[int], end: int | None = None) -> dict[str, np.ndarray]:
    """Rows as the inference stage emits them: one person per frame, plus an end marker when `end` is given."""
    n = len(frames) + (end is not None)
    rows = empty(PERSON_COLUMNS, n)
    rows["video_id"][:] = video_id
    rows["frame_index"][:] = frames + ([-1] if end is not None else [])
    rows["width"][:], rows["height"][:], rows["person_score"][:] = 10, 10, 1.0
    rows["is_end"][len(frames):] = True
    rows["num_frames"][len(frames):] = end or 0
    rows["ref"][len(frames):] = json.dumps({"video_id": video_id, "uri": f"/{video_id}.mp4"})
    rows["keypoints"][:, :, 0] = np.arange(n)[:, None]
    return rows


def block(rows: dict[str, np.ndarray]) -> pa.Table:
    """Person rows as the Arrow block Ray Data keeps in its object store (keypoints a tensor column)."""
    from ray.data.extensions import ArrowTensorArray

    return pa.table({name: ArrowTensorArray.from_numpy(value) if value.ndim > 1 else value
                     for name, value in rows.items()})


def index(table: pa.Table) -> pa.Table:
    return table.select(list(INDEX_COLUMNS))


def test_replayed_batches_overwrite_and_never_return_a_video_twice():
    """The driver indexes block references; a retried task's replayed block counts no frame twice, and a video is
    returned once. The worker that gathers it from every block keeps each (frame, person) once."""
    pending = PendingVideos()
    first, last = block(person_rows("a", [0, 1])), block(person_rows("a", [2], end=3))
    assert pending.add("ref-1", index(first)) == (2, [])
    assert pending.add("ref-2", index(first)) == (0, [])             # replay of a retried task: no frame twice
    assert pending.add("ref-3", index(last)) == (1, [("a", ["ref-1", "ref-2", "ref-3"])])
    assert pending.add("ref-4", index(block(person_rows("a", [0, 1, 2], end=3)))) == (0, [])  # a late replay
    assert pending.pending == {} and pending.take_incomplete() == []

    video = collect_videos([first, first, last], ["a"])["a"]
    assert video.num_frames == 3 and video.rows()["frame_index"].tolist() == [0, 1, 2]   # one person a frame: once
    assert video.ref == {"video_id": "a", "uri": "/a.mp4"}


def test_a_video_whose_rows_never_all_arrive_is_handed_over_with_what_came():
    pending = PendingVideos()
    assert pending.add("ref-1", index(block(person_rows("a", [0, 1], end=3)))) == (2, [])  # frame 2 was lost
    assert pending.take_incomplete() == [("a", ["ref-1"])] and "a" in pending.finished
    assert pending.add("ref-2", index(block(person_rows("a", [2])))) == (0, [])          # too late: not returned twice


# --- memory budget -------------------------------------------------------------------------------------------

def test_pools_shrink_to_fit_memory_reservations_or_fail_clearly():
    GB = 2**30
    assert fit_memory(2, 4, 2 * GB, 4 * GB, 10 * GB) == (2, 1)         # 2*2 + 1*4 <= 10 GB
    assert fit_memory(1, 1, 0, 0, 0) == (1, 1)                         # nothing reserved: nothing to fit
    with pytest.raises(ConfigError, match="reserve 2.0 \\+ 4.0 GB"):
        fit_memory(1, 1, 2 * GB, 4 * GB, 5 * GB)
    config = RunConfig.model_validate({"decode": {"memory_gb": 2}, "model": {"memory_gb": 4}})
    assert actor_memory(config, 1024, topdown=True) == (2 * GB, 4 * GB)  # what the config sets wins
    decode, infer = actor_memory(RunConfig(), 1024, topdown=True)      # else estimated: frames held, model kind
    assert decode == int(0.4 * GB) + 3 * 32 * 1024 * 1024 * 3 and infer == int(3.5 * GB)
    assert actor_memory(RunConfig(), 256)[1] == 1 * GB and actor_memory(RunConfig(), None) == (0, 0)
    pools = plan_pools(RunConfig(), cpus=16, gpus=0, memory=8 * GB, input_size=1024, topdown=True)
    assert (pools.decode, pools.infer, pools.infer_memory) == (4, 1, int(3.5 * GB))  # 4 + 12 asked; fits 4 + 1


def test_decode_actors_share_the_cpus_inference_leaves_so_no_actor_waits():
    assert decode_cpus(1, 1, RunConfig(), cpus=2) == 0.75      # a quarter CPU stays for the write tasks
    assert decode_cpus(2, 1, RunConfig(), cpus=2) == 0.375     # not 3 CPUs asked of 2: all actors run
    assert decode_cpus(4, 1, RunConfig(), cpus=16) == 1.0              # 14.75 CPUs left for 4
    assert decode_cpus(4, 1, RunConfig(), cpus=4) == 0.6875            # a GPU actor too reserves its host's CPU
    with pytest.raises(ConfigError, match="leave none to decode"):
        decode_cpus(1, 2, RunConfig(), cpus=2)


def test_pools_from_the_cluster_resources():
    assert plan_pools(RunConfig(), cpus=2, gpus=0, memory=8 * 2**30) == Pools(1, 1, 0.75, 0.0, 2)  # all CPUs
    assert plan_pools(RunConfig(), cpus=16, gpus=0, memory=8 * 2**30) == Pools(4, 12, 0.9375, 0.0, 1)
    assert plan_pools(RunConfig(), cpus=16, gpus=2, memory=8 * 2**30) == Pools(4, 2, 1.0, 1.0, None)
    assert plan_pools(RunConfig(), cpus=2, gpus=1, memory=8 * 2**30) == Pools(1, 1, 0.75, 1.0, None)  # 1 CPU kept
    two_decoders = RunConfig.model_validate({"decode": {"workers": 2}})
    assert plan_pools(two_decoders, cpus=2, gpus=0, memory=8 * 2**30) == Pools(2, 1, 0.375, 0.0, 2)
    on_cpu = RunConfig.model_validate({"model": {"device": "cpu", "threads": 2}})
    assert plan_pools(on_cpu, cpus=16, gpus=2, memory=8 * 2**30) == Pools(4, 12, 0.9375, 0.0, 2)


def test_object_store_budget_counts_frames_as_they_travel(tmp_path):
    """A top-down model's frames travel at their own size, shrunk to fit frame_size: the budget reads the first
    video's header for it; the bottom-up net's are letterboxed into its square."""
    video = str(encode_video(tmp_path / "a.mp4", num_frames=3, width=320, height=240))
    refs = pa.table({"uri": [video, str(tmp_path / "gone.mp4")]})
    assert transit_frame_bytes(refs, RunConfig(), 1024, topdown=True) == 320 * 240 * 3          # never enlarged
    assert transit_frame_bytes(refs, RunConfig(), 160, topdown=True) == 160 * 120 * 3           # shrunk to fit
    assert transit_frame_bytes(refs, RunConfig(), 256, topdown=False) == 256 * 256 * 3          # the square
    assert transit_frame_bytes(refs.slice(1), RunConfig(), 1024, topdown=True) == 1024 * 1024 * 3  # unreadable
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00" * 100)
    assert transit_frame_bytes(pa.table({"uri": [str(broken)]}), RunConfig(), 512, topdown=True) == 512 * 512 * 3


def test_object_store_budget_does_not_wait_on_a_stalled_first_video(tmp_path, monkeypatch):
    import pipeline.stages.plan

    monkeypatch.setattr(pipeline.stages.plan, "PROBE_TIMEOUT_S", 0.5)
    refs = pa.table({"uri": [stall_ref(tmp_path / "stalled.mp4", "cam1")["uri"]]})  # a read that never completes
    started = time.monotonic()
    assert transit_frame_bytes(refs, RunConfig(), 256, topdown=True) == 256 * 256 * 3
    assert time.monotonic() - started < 5


# --- the whole job through Ray -------------------------------------------------------------------------------

GOOD = {"cam1/a_walk.mp4": dict(num_frames=24, width=96, height=64),
        "cam1/c_side.mkv": dict(num_frames=16, width=64, height=96),
        "cam2/e_wide.mp4": dict(num_frames=240, width=128, height=64)}   # long: a killed job is caught mid-run


def write_good(root: Path) -> Path:
    for rel, kwargs in GOOD.items():
        encode_video(root / rel, **kwargs)
    return root


# A random-weights network finds nobody at the default thresholds; these keep its weakest candidates (about three
# people a frame, scores ~1e-4) so that the compared tables hold rows, and give each of them a track (its people
# jump from frame to frame, so few tracks would reach the default min_hits or min_track_score). Its maps are nearly
# flat: blurred, or searched for a missing keypoint's maximum, they turn the batch-dependent rounding (1e-5 px) into
# 1e-2 px moves (measured), so the blur and the completion are off here; tests/test_grouping.py covers them. The
# network runs in fp32 for the same reason: bf16 (what precision auto takes on GPUs and AVX512-BF16 CPUs) rounds
# to 3 significant digits, so a batch of another composition may move a flat map's peak by far more than 1e-3 px.
PERMISSIVE = ("model.precision=fp32", "grouping.peak_threshold=0.0", "grouping.max_peaks=3",
              "grouping.min_aligned_fraction=0.0", "grouping.min_limb_score=-1.0", "grouping.min_keypoints=1",
              "grouping.min_person_score=0.0", "grouping.heatmap_blur=0", "grouping.fill_margin=null",
              "tracking.min_hits=1", "tracking.min_track_score=0")


def job_args(input_dir: Path, output: Path, checkpoint: str, *extra: str) -> list[str]:
    args = ["--input", str(input_dir), "--output", str(output), "--set", f"model.checkpoint={checkpoint}",
            "--set", "decode.batch_size=4", "--set", "model.batch_size=4", "--set", "write.date=2026-01-02"]
    for item in PERMISSIVE + extra:
        args += ["--set", item]
    return args


def job_config(input_dir: Path, output: Path, checkpoint: str, *extra: str):
    return load_run_config(parse_args(job_args(input_dir, output, checkpoint, *extra)))


def read_table(output: Path, table: str) -> pd.DataFrame:
    """A table's current rows (its Delta snapshot) keyed by file name (uris and video ids differ between archives),
    in a stable order."""
    df = DeltaTable(str(output / table)).to_pandas()
    df = df.assign(name=df["uri"].map(os.path.basename), source=df["source"].astype(str))
    keys = {"frames": ["name", "frame_index", "person_index"], "tracks": ["name", "track_id"]}.get(table, ["name"])
    return df.drop(columns=["video_id", "uri", "date"]).sort_values(keys).reset_index(drop=True)


def assert_same_rows(output: Path, clean: Path, names: set[str] | None = None) -> None:
    for table in ("frames", "tracks"):
        got, want = read_table(output, table), read_table(clean, table)
        if names is not None:
            got = got[got["name"].isin(names)].reset_index(drop=True)
        assert len(want) > 2 * len(GOOD)
        # Same rows, same keys, same ids: exactly. Values: batch composition differs between runs and CPU kernels
        # round differently per batch shape (~1e-9 in map values). The random net's maps hover around zero, where
        # that rounding is a large share of a value, and the sub-pixel peak fit turns it into keypoint moves of up
        # to ~1e-3 px on one machine, 0.022 px on another (CI) and once 0.06 px (an AVX-512 EPYC), and the scores
        # read at those points (~2e-4) by up to 1.1e-6 (measured). So pixels are compared to 0.1 px (a lost, doubled
        # or misplaced row moves whole pixels, and the keys above are exact), scores to 1e-5 and the rest (times)
        # to 1e-4 of itself.
        pixels = [c for c in want.columns if c.startswith(("bbox_", "min_", "max_")) or c.endswith(("_x", "_y"))]
        scores = [c for c in want.columns if c.endswith("_score")]
        pd.testing.assert_frame_equal(got.drop(columns=pixels + scores), want.drop(columns=pixels + scores),
                                      check_exact=False, rtol=1e-4, atol=1e-6)
        pd.testing.assert_frame_equal(got[scores], want[scores], check_exact=False, rtol=0, atol=1e-5)
        pd.testing.assert_frame_equal(got[pixels], want[pixels], check_exact=False, rtol=0, atol=0.1)


@pytest.fixture(scope="module")
def clean_run(ray_local, random_checkpoint, tmp_path_factory):
    root = tmp_path_factory.mktemp("clean")
    summary = run(job_config(write_good(root / "in"), root / "out", random_checkpoint))
    assert summary.status == "clean" and summary.videos_ok == 3
    return root / "out"


def stall_ref(path: Path, source: str) -> dict:
    """A listed video whose read never completes (a stalled mount): a FIFO nobody writes to."""
    faults.make_fifo(path)
    uri = str(path)
    return {"uri": uri, "video_id": make_video_id(uri), "source": source, "size": 1, "version": "1"}


def patch_listing(monkeypatch, extra: list[dict] = (), delete: list[Path] = ()) -> None:
    """The real listing, plus `extra` refs, with `delete` removed right after listing (before decoding)."""
    import pipeline.stages.read

    real = pipeline.stages.read.list_videos

    def listing(*args, **kwargs):
        refs = real(*args, **kwargs) + list(extra)
        for path in delete:
            path.unlink()
        return sorted(refs, key=lambda r: r["uri"])

    monkeypatch.setattr(pipeline.stages.read, "list_videos", listing)


class ActorKiller(threading.Thread):
    """Waits until a decode actor is blocked reading `fifo` (mid-task), then SIGKILLs this cluster's actors whose
    class names contain one of `targets`, by pid, and notes the memory the actors had reserved."""

    def __init__(self, fifo: Path, targets: tuple[str, ...]):
        super().__init__(daemon=True)
        self.fifo, self.targets = fifo, targets
        self.killed: dict[str, str] = {}           # actor id -> class name
        self.reserved_memory = 0.0

    def run(self) -> None:
        import ray
        from ray._private.state import actors  # the GCS actor table: works without the dashboard

        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                writer = os.open(self.fifo, os.O_WRONLY | os.O_NONBLOCK)   # succeeds once a reader waits
                break
            except OSError:
                time.sleep(0.05)
        else:
            return
        try:
            while time.monotonic() < deadline:  # the decode actor waits on the FIFO while the others start up
                alive = {actor_id: info for actor_id, info in actors().items() if info["State"] == "ALIVE"
                         and any(t in info["ActorClassName"] for t in self.targets)}
                if all(any(t in info["ActorClassName"] for info in alive.values()) for t in self.targets):
                    break
                time.sleep(0.1)
            self.reserved_memory = ray.cluster_resources()["memory"] - ray.available_resources().get("memory", 0)
            for actor_id, info in alive.items():
                os.kill(info["Pid"], signal.SIGKILL)
                self.killed[actor_id] = info["ActorClassName"]
        finally:
            time.sleep(0.5)
            os.close(writer)  # with the reader dead, the FIFO has no data and no writer: a retry blocks again

    def restarts(self) -> dict[str, int]:
        from ray._private.state import actors

        table = actors()
        return {name: table[actor_id]["NumRestarts"] for actor_id, name in self.killed.items()}


BAD = {  # file -> (builder, error type); each must give exactly one error row
    "cam3/empty.mp4": (faults.write_zero_byte, "EmptyFile"),
    "cam3/half.mp4": (faults.write_truncated, "InvalidDataError"),
    "cam3/half_indexed.mp4": (lambda p: faults.write_truncated(p, faststart=True), "MissingFrames"),
    "cam3/notes.mp4": (faults.write_text_file, "InvalidDataError"),
    "cam3/sound.mp4": (faults.write_audio_only, "NoVideoStream"),
    "cam3/zzzz.avi": (faults.write_unknown_fourcc, "UnsupportedCodec"),
    "cam3/liar.avi": (faults.write_overreported_avi, "MissingFrames"),
    "cam3/sector.avi": (faults.write_corrupt_frame, "CorruptFrames"),
}
EDGE = {  # file -> (builder, frames, (width, height)); valid but unusual: rows, no error
    "cam4/vfr.mp4": (lambda p: faults.write_vfr(p, [0, 0.05, 0.1, 0.4, 0.45, 1.0]), 6, (96, 64)),
    "cam4/portrait.mp4": (lambda p: faults.write_rotated(p, -90, num_frames=6), 6, (64, 96)),
    "cam4/tiny.mp4": (lambda p: encode_video(p, num_frames=6, width=16, height=16), 6, (16, 16)),
    "cam4/uhd.mp4": (lambda p: encode_video(p, num_frames=3, width=3840, height=2160), 3, (3840, 2160)),
    "cam4/av1.mkv": (faults.write_av1, 8, (96, 64)),
}


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_bad_inputs_each_add_one_error_row_and_change_nothing_else(ray_local, random_checkpoint, clean_run,
                                                                   tmp_path, monkeypatch, capsys):
    root = write_good(tmp_path / "in")
    for rel, (build, _) in BAD.items():
        build(root / rel)
    for rel, (build, _, _) in EDGE.items():
        build(root / rel)
    gone = encode_video(root / "cam3" / "gone.mp4", num_frames=4)
    stalled = stall_ref(tmp_path / "stall" / "stalled.mp4", "cam3")
    patch_listing(monkeypatch, extra=[stalled], delete=[gone])

    summary = run(job_config(root, tmp_path / "out", random_checkpoint, "decode.timeout_s=3"))

    expected = {Path(rel).name: kind for rel, (_, kind) in BAD.items()} | {"gone.mp4": "FileNotFound",
                                                                         "stalled.mp4": "Timeout"}
    listed = len(GOOD) + len(BAD) + len(EDGE) + 2
    assert (summary.videos_listed, summary.videos_failed, summary.videos_ok) == (listed, len(expected),
                                                                                listed - len(expected))
    assert summary.status == "partial" and summary.exit_code == 3
    errors = read_table(tmp_path / "out", "errors")
    assert errors["name"].tolist() == sorted(expected)                        # exactly one row each
    assert dict(zip(errors["name"], errors["error_type"])) == expected
    assert errors["message"].str.len().min() > 20 and (errors["run_id"] == summary.run_id).all()

    frames = read_table(tmp_path / "out", "frames")
    assert_same_rows(tmp_path / "out", clean_run, names={Path(rel).name for rel in GOOD})
    counts = frames.groupby("name")["frame_index"].nunique()
    for rel, (_, num_frames, size) in EDGE.items():
        name = Path(rel).name
        assert counts[name] == num_frames, name
        assert tuple(frames.loc[frames["name"] == name, ["width", "height"]].iloc[0]) == size, name
    for name, frames_ok in zip(errors["name"], errors["frames_ok"]):          # partial videos: frames kept
        assert counts.get(name, 0) == frames_ok, name
    assert errors.set_index("name").loc["sector.avi", "frames_ok"] == 19

    from jobs.run import print_summary
    print_summary(summary)
    out = capsys.readouterr().out
    assert f"{listed - len(expected)} ok / {len(expected)} failed / 0 skipped" in out
    assert "stalled.mp4: open: Timeout: " in out


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_killed_actors_restart_and_lose_or_duplicate_nothing(ray_local, random_checkpoint, clean_run, tmp_path,
                                                            monkeypatch):
    root = write_good(tmp_path / "in")
    fifo = tmp_path / "stall" / "b_stalled.mp4"                     # sorted between the good videos of cam1
    patch_listing(monkeypatch, extra=[stall_ref(fifo, "cam1")])
    killer = ActorKiller(fifo, ("FrameDecoder", "PoseEstimator"))
    killer.start()
    summary = run(job_config(root, tmp_path / "out", random_checkpoint, "decode.timeout_s=4",
                             "decode.memory_gb=0.25", "model.memory_gb=0.5"))
    killer.join(5)

    assert sorted("FrameDecoder" in name for name in killer.killed.values()) == [False, True]  # one of each
    assert all(n >= 1 for n in killer.restarts().values())           # both were killed and came back
    assert killer.reserved_memory >= 0.75 * 2**30                    # the memory budgets were reserved
    assert (summary.videos_ok, summary.videos_failed) == (3, 1)
    assert_same_rows(tmp_path / "out", clean_run)
    errors = read_table(tmp_path / "out", "errors")
    assert errors["name"].tolist() == ["b_stalled.mp4"] and errors["error_type"].tolist() == ["Timeout"]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_video_that_kills_its_decoder_every_time_gets_an_error_row(ray_local, random_checkpoint, tmp_path,
                                                                    monkeypatch):
    """With no retries left, the task dies with its actor: the video is reported, the job goes on.

    Tasks queued on the same actor die with it (Ray may run them out of order), so the good video is either
    written whole or reported the same way: never silently missing."""
    encode_video(tmp_path / "in" / "cam1" / "a.mp4", num_frames=8)
    fifo = tmp_path / "stall" / "b_crash.mp4"
    patch_listing(monkeypatch, extra=[stall_ref(fifo, "cam1")])
    killer = ActorKiller(fifo, ("FrameDecoder",))
    killer.start()
    summary = run(job_config(tmp_path / "in", tmp_path / "out", random_checkpoint, "ray.max_task_retries=0"))
    killer.join(5)
    assert len(killer.killed) == 1
    errors = read_table(tmp_path / "out", "errors").set_index("name")["error_type"].to_dict()
    assert errors.get("b_crash.mp4") == "WorkerDied" and set(errors.values()) == {"WorkerDied"}
    has_frames = (tmp_path / "out" / "frames").exists()
    written = read_table(tmp_path / "out", "frames").groupby("name")["frame_index"].nunique().to_dict() \
        if has_frames else {}
    assert written in ({"a.mp4": 8}, {}) and ("a.mp4" in written) != ("a.mp4" in errors)   # one or the other
    assert (summary.videos_ok, summary.videos_failed) == (len(written), len(errors))
    assert summary.exit_code == (3 if written else 1)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_job_killed_mid_run_then_rerun_equals_a_clean_run(ray_local, random_checkpoint, clean_run, tmp_path):
    root = write_good(tmp_path / "in")
    out = tmp_path / "out"
    gcs = ray_local.get_runtime_context().gcs_address     # the job joins this cluster: no second Ray to start
    log = (tmp_path / "killed.log").open("w")
    # a commit as soon as each video is written, so that the kill lands between two of them
    job = subprocess.Popen([sys.executable, "-m", "jobs.run", *job_args(root, out, random_checkpoint,
                                                                         f"ray.address={gcs}",
                                                                         "write.commit_seconds=0.1")],
                           cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    first_commit = out / "videos" / "_delta_log" / f"{1:020d}.json"       # version 0 creates the table
    try:
        deadline = time.monotonic() + 180
        while not first_commit.exists() and job.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        job.send_signal(signal.SIGKILL)
    finally:
        job.wait(30)
        log.close()
    assert job.returncode == -signal.SIGKILL, (tmp_path / "killed.log").read_text()[-3000:]
    written = len(read_table(out, "videos"))
    assert 1 <= written < len(GOOD)                                    # killed after one video, before the end
    assert not (out / "runs").exists()

    summary = run(job_config(root, out, random_checkpoint))
    assert summary.status == "clean" and summary.exit_code == 0 and summary.videos_skipped == written
    assert_same_rows(out, clean_run)
    assert len(pd.read_parquet(out / "runs")) == 1


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_run_killed_between_the_commits_of_a_wave_leaves_nothing_twice(ray_local, random_checkpoint, clean_run,
                                                                        tmp_path):
    """A wave commits frames, tracks, errors, then videos. A run killed after its frames commit leaves rows that no
    videos row accounts for: the next run finds them in the commit log and replaces them in the same commit that
    adds its own."""
    from pipeline.outputs.tables import Changes, TableCommitter, write_files
    from pipeline.stages.write import with_partitions

    out = tmp_path / "out"
    shutil.copytree(clean_run, out)
    frames = DeltaTable(str(out / "frames")).to_pyarrow_table()
    [victim] = frames.filter(pc.equal(frames["uri"], pc.max(frames["uri"])))["video_id"].unique().to_pylist()
    stale = frames.filter(pc.equal(frames["video_id"], victim))
    date, source = stale["date"][0].as_py(), stale["source"][0].as_py()
    stale = stale.drop_columns(["date", "source"])
    stale = stale.set_column(stale.schema.get_field_index("person_score"), "person_score",
                             pc.add(stale["person_score"], 1.0))       # the killed run's rows differ
    stale = with_partitions(stale, date, source)
    files = write_files(str(out), "frames", stale, "killed-run")
    TableCommitter(str(out), "frames", "killed-run", {}, None).commit(Changes(files, {victim}))
    assert len(read_table(out, "frames")) > len(read_table(clean_run, "frames"))   # the kill's state: rows twice

    summary = run(job_config(clean_run.parent / "in", out, random_checkpoint))   # the clean run's own videos
    assert (summary.videos_skipped, summary.videos_ok) == (len(GOOD) - 1, 1)   # only the suspect video again
    assert_same_rows(out, clean_run)


@pytest.mark.slow
def test_memory_budget_larger_than_the_cluster_fails_fast(ray_local, random_checkpoint, tmp_path, capsys):
    encode_video(tmp_path / "in" / "a.mp4", num_frames=2)
    code = main(["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"),
                 "--set", f"model.checkpoint={random_checkpoint}", "--set", "model.memory_gb=100000"])
    assert code == EXIT_USAGE
    assert "model.memory_gb" in capsys.readouterr().err


def test_a_replayed_row_replaces_the_first_and_rows_come_out_sorted():
    first = person_rows("a", [2, 0])
    replay = person_rows("a", [0], end=3)
    replay["keypoints"][0, :, 0] = 99.0                                # the retried batch's copy of frame 0 differs
    blocks = [block(first), block(replay), block(person_rows("a", [1]))]
    pending = PendingVideos()
    done = [video for ref, b in enumerate(blocks) for video in pending.add(ref, index(b))[1]]
    assert done == [("a", [0, 1, 2])]
    rows = collect_videos(blocks, ["a"])["a"].rows()
    assert rows["frame_index"].tolist() == [0, 1, 2] and rows["keypoints"][0, 0, 0] == 99.0   # the last copy wins
