"""The benchmark's functions on toy sizes: real videos, a tiny network, real worker processes and a real Ray run.

No timing assertions (the CPU is shared); the checks are on what was counted and on the table's shape.
"""

import json

import pytest

from jobs.benchmark import main, parse_args
from jobs.benchmark.archive import archive_videos, benchmark_archive, video_frames
from jobs.benchmark.raw import raw_decode_rate, raw_model_rates
from jobs.benchmark.report import AFTER_PIPELINE, COLUMNS, Measurement, format_summary, markdown_table, summarize
from jobs.benchmark.runs import steady_rate


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> str:
    from pipeline.models.bottomup import ModelConfig, PoseNet
    from pipeline.models.checkpoint import checkpoint_metadata, save_checkpoint

    config = ModelConfig(input_size=64, width=8, feature_channels=16, head_channels=8, head_convs=1)
    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    save_checkpoint(PoseNet(config), str(path), checkpoint_metadata(config))
    return str(path)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("bench-cache")


def test_archive_is_generated_once_and_decodes_to_every_frame(cache):
    archive = benchmark_archive(cache, videos=2, seconds=0.3, width=96, height=64)
    videos = archive_videos(archive)
    assert [p.name for p in videos] == ["video000.mp4", "video001.mp4"]
    mtimes = [p.stat().st_mtime_ns for p in videos]
    assert archive_videos(benchmark_archive(cache, 2, 0.3, 96, 64)) == videos          # cached: not rewritten
    assert [p.stat().st_mtime_ns for p in videos] == mtimes

    row = raw_decode_rate(videos, size=64, workers=2, batch_size=4)
    assert row.measurement == "raw decode" and row.frames == 2 * 9 and row.seconds > 0   # 0.3 s at 30 fps
    assert "2 proc" in row.config


def test_raw_model_rates_time_forward_and_whole_call_on_video_frames(tiny_checkpoint, cache):
    frames = video_frames(archive_videos(benchmark_archive(cache, 2, 0.3, 96, 64))[0], size=64, count=3)
    assert frames.shape == (3, 64, 64, 3) and frames.dtype.name == "uint8" and frames.any()
    forward, call = raw_model_rates(tiny_checkpoint, batch_size=2, workers=1, threads=1, device="cpu",
                                    precision="fp32", min_seconds=0.05, frames=frames)
    assert (forward.measurement, call.measurement) == ("raw model fwd", "raw model")
    for row in (forward, call):
        assert row.frames >= 6 and row.frames % 2 == 0 and row.frames_per_s > 0
        assert row.extra["best_frames_per_s"] >= row.frames_per_s * 0.999
        assert row.extra["cpu_ms_per_frame"] > 0
        assert "1 proc x 1 thr, B=2, cpu float32, video input" in row.config  # the dtype the actor ran


def test_summary_ratios_and_markdown_table():
    rows = [Measurement("raw decode", "", 300, 1.0), Measurement("raw model", "", 50, 1.0),
            Measurement("pipeline 1 video", "", 20, 5.0, 100.0, 400.0),
            Measurement("pipeline", "x, 20 videos", 420, 13.0, 110.0, 430.0,
                        extra={"steady_frames_per_s": 45.0})]
    summary = summarize(rows)
    assert summary["ratio_steady"] == pytest.approx(0.9)
    assert summary["raw_bound_frames_per_s"] == 50
    assert summary["ratio_wall"] == pytest.approx(420 / 13 / 50)
    assert summary["pipeline_marginal_frames_per_s"] == pytest.approx(400 / 8)   # (420 - 20) / (13 - 5)
    assert summary["ratio_marginal"] == pytest.approx(1.0)
    assert summary["memory_ratio_20_vs_1"] == pytest.approx(540 / 500)
    assert "bracketed" not in summary
    lines = markdown_table(rows).splitlines()
    assert lines[0] == "| " + " | ".join(COLUMNS) + " |" and len(lines) == 2 + len(rows)
    assert lines[-1].startswith("| pipeline | x, 20 videos | 420 | 13.0 | 32.3 | 110.0 | 430.0 | - |")


def test_summary_brackets_the_pipeline_with_the_raw_model_measured_before_and_after():
    rows = [Measurement("raw decode", "", 300, 1.0), Measurement("raw model", "", 50, 1.0),
            Measurement("pipeline 1 video", "", 20, 5.0), Measurement("pipeline", "", 420, 13.0,
                                                                       extra={"steady_frames_per_s": 36.0}),
            Measurement(AFTER_PIPELINE, "", 40, 1.0)]                      # the machine slowed down by 20 %
    summary = summarize(rows)
    assert summary["ratio_wall"] == pytest.approx(420 / 13 / 50)           # against the raw model before only
    assert summary["raw_model_drift"] == pytest.approx(0.8)
    bracketed = summary["bracketed"]
    assert bracketed["raw_bound_frames_per_s"] == pytest.approx(45)
    assert bracketed["ratio_wall"] == pytest.approx(420 / 13 / 45)
    assert bracketed["ratio_marginal"] == pytest.approx(50 / 45) and bracketed["ratio_steady"] == pytest.approx(0.8)
    assert "0.80 x its rate before" in format_summary(summary)


def test_steady_rate_counts_from_the_first_video_finished_to_the_last():
    finished = [(6.0, 60), (4.0, 60), (5.0, 30), (8.0, 90)]      # (seconds since the start, frames), any order
    assert steady_rate(finished) == pytest.approx((30 + 60 + 90) / (8.0 - 4.0))  # the first video's frames: before
    assert steady_rate(finished[:2]) is None and steady_rate([(1.0, 5)] * 3) is None


def test_bad_options_are_refused_with_the_expected_form(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--size", "640"])
    assert "WIDTHxHEIGHT" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(["--decode-workers", "0,1"])
    assert "positive integers" in capsys.readouterr().err


@pytest.mark.slow
def test_main_writes_the_table_with_every_row(ray_local, tiny_checkpoint, cache, tmp_path):
    out = tmp_path / "result"
    code = main(["--videos", "3", "--seconds", "0.2", "--size", "96x64", "--checkpoint", tiny_checkpoint,
                 "--batch-size", "4", "--device", "cpu", "--decode-workers", "1", "--model-seconds", "0.05",
                 "--skip", "memory", "--cache-dir", str(cache), "--out", str(out)])
    assert code == 0
    result = json.loads(out.with_suffix(".json").read_text())
    names = [row["measurement"] for row in result["rows"]]
    assert names == ["raw decode", "raw model fwd", "raw model", "pipeline 1 video", "pipeline", AFTER_PIPELINE]
    assert all(list(row)[:len(COLUMNS)] == list(COLUMNS) for row in result["rows"])
    frames = {row["measurement"]: row["frames"] for row in result["rows"]}
    assert frames["raw decode"] == frames["pipeline"] == 3 * 6 and frames["pipeline 1 video"] == 6
    pipeline = result["rows"][-2]
    assert pipeline["driver_rss_mb"] > 0 and pipeline["workers_rss_mb"] > 0
    assert {"FrameDecoder", "PoseEstimator"} <= set(pipeline["extra"]["role_peak_rss_mb"])
    parts = pipeline["extra"]["workers_peak_by_role_mb"]          # what the workers' peak was, at that instant
    assert sum(parts.values()) == pytest.approx(pipeline["workers_rss_mb"])
    assert pipeline["extra"]["workers_peak_at_s"] >= 0
    assert {"ratio_wall", "ratio_steady", "raw_bound_frames_per_s", "bracketed"} <= set(result["summary"])
    assert result["context"]["machine"]["cpus"] >= 1
    assert "| pipeline |" in out.with_suffix(".md").read_text()
    assert ray_local.is_initialized()                                # the benchmark leaves a Ray it did not start


def test_runs_wait_for_the_actors_of_the_previous_run_to_exit():
    import subprocess
    import time

    from jobs.benchmark.resources import wait_for_actors_to_exit

    title = "ray::MapWorker(MapBatches(PoseEstimator))"       # the process title Ray gives an inference actor
    actor = subprocess.Popen(["bash", "-c", f"exec -a '{title}' sleep 1.5"])
    try:
        time.sleep(0.2)
        assert not wait_for_actors_to_exit(timeout_s=0.2)       # still alive: the caller is told
        assert wait_for_actors_to_exit(roles=("FrameDecoder",), timeout_s=0.2)  # other roles do not count
        started = time.monotonic()
        assert wait_for_actors_to_exit(timeout_s=10)
        assert actor.poll() is not None and time.monotonic() - started < 10
    finally:
        actor.kill()
        actor.wait()


def test_the_sampler_reads_each_threads_wait_at_most_every_wait_interval(monkeypatch):
    """Reading every thread's schedstat is the sampler's largest cost (Ray's processes have dozens of threads): it
    reads them at the first sample, every `wait_interval_s`, and at the last, and counts CPU at every sample."""
    import time

    from jobs.benchmark import resources

    reads = []
    monkeypatch.setattr(resources, "read_cpu_wait", lambda pid: reads.append(pid) or 0.1 * reads.count(pid))
    with resources.ResourceSampler(interval_s=0.01, store_interval_s=100, wait_interval_s=0.25) as sampler:
        time.sleep(0.6)  # not a busy loop: it would hold the GIL and starve the sampler's thread
    driver = sampler.cpu_seconds()["driver"]
    count = reads.count(sampler.process.pid)
    assert 3 <= count <= 5                                     # first, 1-3 in between, last; not ~60
    assert driver["cpu_s"] > 0 and driver["wait_s"] == pytest.approx(0.1 * (count - 1))  # the sampling's own CPU


def test_runs_wait_for_the_idle_workers_an_earlier_run_left():
    import subprocess
    import sys

    # in a process of its own: Ray's real workers, children of this one when a test started Ray, would count
    script = """
import subprocess, time
from jobs.benchmark.resources import wait_for_actors_to_exit
idle = [subprocess.Popen(["bash", "-c", f"exec -a 'ray::IDLE' sleep {seconds}"]) for seconds in (30, 1.5)]
time.sleep(0.2)
assert wait_for_actors_to_exit(timeout_s=0.2)                       # idle workers count only when asked
assert not wait_for_actors_to_exit(timeout_s=0.2, idle_at_most=1)   # one too many: the caller is told
assert wait_for_actors_to_exit(timeout_s=10, idle_at_most=1)        # ... until Ray ends the extra one
assert idle[1].poll() is not None and idle[0].poll() is None
idle[0].kill()
"""
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)


def test_topdown_net_rows_time_each_net_in_torch_onnxruntime_and_litert():
    """The imported model's nets alone: torch and ONNX Runtime at the given batch sizes and LiteRT at batch 1, on
    real crops; then ONNX Runtime and LiteRT alternating in one process."""
    import numpy as np

    from jobs.benchmark.topdown import raw_net_rates
    from pipeline.models.checkpoint import resolve_checkpoint

    rows = raw_net_rates({"lite": resolve_checkpoint("blazepose-lite")}, [1, 2], device="cpu", precision="fp32",
                         threads=1, min_seconds=0.05)
    names = [(row.measurement, row.config.split(",")[0], row.config.split(", ")[-1].lstrip("0123456789 "))
             for row in rows]
    runtimes = [(b, r) for r in ("torch", "onnxruntime") for b in ("B=1", "B=2")]
    pair = ("B=2 / B=1", "alternating batches")
    assert names == [("raw detector", b, r) for b, r in runtimes] + \
        [("litert detector", "B=1", "cpu float32 (XNNPACK)"), ("onnxruntime/litert detector", *pair)] + \
        [("raw landmarks lite", b, r) for b, r in runtimes] + \
        [("litert landmarks lite", "B=1", "cpu float32 (XNNPACK)"), ("onnxruntime/litert landmarks lite", *pair)]
    for row in rows:
        assert row.frames >= 3 and row.frames_per_s > 0 and row.extra["ms_per_input"] > 0
        assert ("float32" in row.config) and ("1 thr" in row.config)
    for row in rows[len(runtimes) + 1::len(runtimes) + 2]:                 # the alternating rows
        onnx, lite = (np.array(row.extra["steps"][r]) for r in ("onnxruntime", "litert"))
        assert len(onnx) == len(lite) >= 6 and (onnx > 0).all() and (lite > 0).all()
        assert row.config.split(", ")[-1] == f"{len(onnx)} alternating batches"
        assert row.extra["ratio"] == pytest.approx(np.median(onnx / lite))
        assert row.extra["best_ratio"] == pytest.approx(onnx.min() / lite.min())


@pytest.mark.slow
def test_scale_benchmark_writes_every_row(ray_local, tiny_checkpoint, cache, tmp_path):
    from jobs.benchmark.scale import main as scale_main

    out = tmp_path / "scale"
    code = scale_main(["--videos", "6", "--frames", "2", "--checkpoint", tiny_checkpoint, "--driver-batch-sizes", "4",
                       "--driver-videos", "2", "--driver-seconds", "0.3", "--query-videos", "300",
                       "--rows-per-video", "6", "--planning-videos", "3000", "--cache-dir", str(cache),
                       "--out", str(out)])
    assert code == 0
    rows = {row["row"]: row for row in json.loads(out.with_suffix(".json").read_text())["rows"]}
    assert list(rows) == ["many videos 6", "rerun 6", "driver cost, decode.batch_size 4", "query", "planning"]
    assert rows["many videos 6"]["frames"] == 12 and rows["many videos 6"]["files"]["videos"] == 6   # 6 sources
    assert rows["rerun 6"]["skipped"] == 6 and rows["rerun 6"]["commits"] == 0
    assert [run["frames"] for run in rows["driver cost, decode.batch_size 4"]["runs"]] == [18, 18]
    assert rows["query"]["rows"] == 300 * 6 and set(rows["query"]["timings"]) == {"count", "group"}
    assert (rows["planning"]["todo"], rows["planning"]["skipped"]) == (1000, 3000)
    assert "| planning |" in out.with_suffix(".md").read_text()


def test_the_gpu_benchmark_runs_its_rows_on_any_device(tmp_path):
    """`python -m jobs.benchmark.gpu` (infra/gpu/check.sh) here on the CPU: the person finding at a pipeline batch
    size with where its time goes, and each net alone, written to OUT.json."""
    import json

    from jobs.benchmark.gpu import main as gpu_main

    out = tmp_path / "gpu"
    assert gpu_main(["--device", "cpu", "--checkpoint", "blazepose-lite", "--batch-sizes", "4",
                     "--net-batch-sizes", "2", "--precisions", "fp32", "--seconds", "0.1", "--out", str(out)]) == 0
    rows = json.loads(out.with_suffix(".json").read_text())["rows"]
    forward = next(r for r in rows if r["measurement"] == "raw model fwd")
    assert 0 <= forward["extra"]["glue_fraction"] < 1 and forward["extra"]["op_launches"] > 0
    assert sum(forward["extra"]["net_batches"]["landmarks"]) >= 4                # people in each of the 4 frames
    assert {r["measurement"] for r in rows} >= {"raw model", "raw detector", "raw landmarks lite"}
