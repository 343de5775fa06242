"""Archive-scale benchmark: what grows with the number of videos, measured on this machine.

`python -m jobs.benchmark.scale [--videos 2000] [--out docs/bench-scale]` prints a Markdown table:

    many videos N      one run over N short videos (a few frames each): processing seconds per video, driver peak
                       RSS and CPU, Delta commits, data files per table after compaction
    rerun N            the same command again: every video is current and skipped
    driver cost B      two runs over the same archive at two frame rates (model.frame_size small and large): the
                       driver's CPU while processing (start-up and compaction left out: once per run) as a fixed
                       share of a core plus a cost per frame, and the share Ray Data's executor thread used;
                       for each decoded batch size B of --driver-batch-sizes
    query              DuckDB over a frames table of --query-videos videos written in waves as a run writes it and
                       compacted (through `connect`, and the folder as plain Parquet), against the same rows as
                       one Parquet file: count(*) and GROUP BY video_id
    planning           a nightly rerun's planning (`plan_videos`) against a videos table of --planning-videos
                       processed videos plus 1,000 new ones listed: seconds and peak memory, listing excluded

Rates move with other load on a shared machine; compare rows of one run. `docs/performance.md` has the figures.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from jobs.benchmark.archive import DEFAULT_CACHE
from jobs.benchmark.report import machine_description
from jobs.benchmark.resources import ResourceSampler, wait_for_actors_to_exit
from jobs.cli import ArgumentParser, configure_logging

logger = logging.getLogger("posepipe.benchmark")

CODECS = (("libx264", ".mp4"), ("mpeg4", ".mp4"), ("libx264", ".mkv"))
SIZES = ((64, 48), (96, 64), (128, 72))


def short_videos(cache_dir: Path, count: int, frames: int) -> Path:
    """`count` distinct short videos of varied codecs, containers and sizes, generated once into the cache."""
    import av

    folder = cache_dir / f"short-{count}x{frames}"
    done = folder / ".complete"
    if done.exists():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        codec, suffix = CODECS[i % len(CODECS)]
        width, height = SIZES[i % len(SIZES)]
        path = folder / f"cam{i % 10}" / f"v{i:06d}{suffix}"
        path.parent.mkdir(parents=True, exist_ok=True)
        with av.open(str(path), "w") as container:
            stream = container.add_stream(codec, rate=10)
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            for _ in range(frames):
                image = rng.integers(0, 255, (height, width, 3), np.uint8)
                for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
    done.touch()
    return folder


def thread_cpu_seconds(native_id: int) -> float | None:
    """User + system CPU seconds of one thread of this process (Linux), None once it has ended."""
    try:
        fields = Path(f"/proc/self/task/{native_id}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class ExecutorSampler(threading.Thread):
    """CPU seconds of Ray Data's streaming-executor threads in this process (found by Python thread name), sampled
    until stopped: the threads end with the run, so each one's last sample is its total."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.stop = threading.Event()
        self.seen: dict[int, float] = {}

    def run(self) -> None:
        while not self.stop.wait(0.2):
            for thread in threading.enumerate():
                if "StreamingExecutor" in thread.name and thread.native_id is not None:
                    seconds = thread_cpu_seconds(thread.native_id)
                    if seconds is not None:
                        self.seen[thread.native_id] = seconds

    def total(self) -> float:
        return sum(self.seen.values())


class DriverCpu(threading.Thread):
    """(monotonic time, CPU seconds of this process) every 0.1 s, to take the driver's CPU over a window."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.samples: list[tuple[float, float]] = []
        self.stop = threading.Event()

    def sample(self) -> None:
        times = os.times()
        self.samples.append((time.monotonic(), times.user + times.system))

    def run(self) -> None:
        self.sample()
        while not self.stop.wait(0.1):
            self.sample()
        self.sample()

    def between(self, start: float, end: float) -> float:
        """CPU seconds from the sample nearest `start` to the one nearest `end`."""
        first = min(self.samples, key=lambda s: abs(s[0] - start))
        last = min(self.samples, key=lambda s: abs(s[0] - end))
        return last[1] - first[1]


def timed_run(archive: Path, output: Path, overrides: list[str], sample_tree: bool = True) -> dict[str, Any]:
    """`jobs.run.run` with the driver's CPU (whole run and processing only), RSS and executor thread sampled;
    `sample_tree` also samples every process of the job (`ResourceSampler`), which costs the driver's process a few
    per cent of a core, so the driver-cost runs leave it out."""
    from jobs.run import load_run_config, parse_args, run

    args = ["--input", str(archive), "--output", str(output)]
    for item in overrides:
        args += ["--set", item]
    config = load_run_config(parse_args(args))
    wait_for_actors_to_exit()
    executor, driver = ExecutorSampler(), DriverCpu()
    executor.start()
    driver.start()
    with ResourceSampler() if sample_tree else contextlib.nullcontext() as sampler:
        called = time.monotonic()
        summary = run(config)
    for thread in (executor, driver):
        thread.stop.set()
        thread.join()
    cpu = sampler.cpu_seconds() if sampler else {"driver": {"cpu_s": driver.samples[-1][1] - driver.samples[0][1]}}
    processing_cpu = driver.between(called + summary.startup_seconds, called + summary.seconds)
    return {"videos": summary.videos_listed, "skipped": summary.videos_skipped, "failed": summary.videos_failed,
            "frames": summary.frames, "seconds": summary.seconds, "startup_s": summary.startup_seconds,
            "processing_s": summary.processing_seconds, "compact_s": summary.compact_seconds,
            "commits": summary.commits, "driver_rss_mb": sampler.driver_mb if sampler else None,
            "driver_cpu_s": cpu.get("driver", {}).get("cpu_s", 0.0), "driver_processing_cpu_s": processing_cpu,
            "executor_cpu_s": executor.total(), "cpu": cpu}


def data_files(output: Path) -> dict[str, int]:
    from pipeline.outputs.tables import current_files

    return {name: len(current_files(str(output), name)) for name in ("frames", "tracks", "errors", "videos", "runs")}


def many_videos(cache_dir: Path, counts: list[int], frames: int, overrides: list[str]) -> list[dict[str, Any]]:
    rows = []
    for count in counts:
        archive = short_videos(cache_dir, count, frames)
        output = Path(tempfile.mkdtemp(prefix="posepipe-scale-"))
        try:
            first = timed_run(archive, output, overrides)
            first |= {"row": f"many videos {count}", "files": data_files(output)}
            rows.append(first)
            again = timed_run(archive, output, overrides)
            rows.append(again | {"row": f"rerun {count}"})
        finally:
            shutil.rmtree(output, ignore_errors=True)
    return rows


def driver_cost(cache_dir: Path, overrides: list[str], sizes: tuple[int, int], batch_size: int,
                videos: int = 16, seconds: float = 4.0) -> dict[str, Any]:
    """Driver CPU = fixed x seconds + per_frame x frames, from two runs of one archive at two rates, with decoded
    batches of `batch_size` frames (the blocks the driver indexes, one per batch)."""
    overrides = overrides + [f"decode.batch_size={batch_size}"]
    from jobs.benchmark.archive import benchmark_archive

    archive = benchmark_archive(cache_dir, videos, seconds, 160, 120)     # 1,920 frames by default
    runs = []
    for size in sizes:
        output = Path(tempfile.mkdtemp(prefix="posepipe-scale-"))
        try:
            runs.append(timed_run(archive, output, overrides + [f"model.frame_size={size}"], sample_tree=False)
                        | {"frame_size": size})
        finally:
            shutil.rmtree(output, ignore_errors=True)
    # the driver's CPU while processing (start-up and compaction are once per run): two equations, two unknowns
    a = np.array([[r["processing_s"], r["frames"]] for r in runs])
    b = np.array([r["driver_processing_cpu_s"] for r in runs])
    fixed, per_frame = np.linalg.solve(a, b) if abs(np.linalg.det(a)) > 1e-9 else (float("nan"),) * 2
    return {"row": f"driver cost, decode.batch_size {batch_size}", "runs": runs, "fixed_core_share": float(fixed), "per_frame_ms": 1e3 * float(per_frame),
            "executor_share": [r["executor_cpu_s"] / r["driver_processing_cpu_s"] if r["driver_processing_cpu_s"]
                               else None for r in runs]}


def query(videos: int, rows_per_video: int) -> dict[str, Any]:
    """DuckDB over the Delta frames table (written in waves of 256 videos, compacted) and over one Parquet file."""
    import duckdb
    import pyarrow.parquet as pq

    from pipeline.outputs.query import connect
    from pipeline.outputs.tables import compact, read_table
    from pipeline.stages.assemble import TrackedVideo
    from pipeline.stages.write import WaveContext, write_videos_now

    root = Path(tempfile.mkdtemp(prefix="posepipe-scale-query-"))
    try:
        context = WaveContext(str(root), "bench", dt.date(2026, 1, 1), "h")
        rng = np.random.default_rng(0)
        per_frame = 3
        frames = rows_per_video // per_frame
        started = time.perf_counter()
        for start in range(0, videos, 256):
            batch = []
            for i in range(start, min(videos, start + 256)):
                kp = rng.uniform(0, 600, (per_frame, 17, 3)).astype(np.float32)
                tracked = TrackedVideo.from_frames([(t, t / 30, 640, 360, np.arange(per_frame),
                                                     np.full(per_frame, 0.9, np.float32), kp)
                                                    for t in range(frames)])
                batch.append(({"video_id": f"v{i:07d}", "uri": f"/a/cam{i % 10}/v{i}.mp4", "source": f"cam{i % 10}",
                               "size": 1, "version": "1"}, tracked))
            write_videos_now(context, batch)
        write_seconds = time.perf_counter() - started
        compact(str(root), "frames")
        single = root / "one.parquet"
        pq.write_table(read_table(str(root), "frames"), single)
        con = connect(str(root))
        plain = duckdb.connect()
        statements = {"count": "SELECT count(*) FROM {}", "group": "SELECT video_id, count(*) FROM {} GROUP BY 1"}
        timings = {}
        folder = f"read_parquet('{root}/frames/**/*.parquet', hive_partitioning = true)"
        for name, sql in statements.items():
            timings[name] = {"delta": best_of(lambda: con.execute(sql.format("frames")).fetchall()),
                             "folder": best_of(lambda: plain.execute(sql.format(folder)).fetchall()),
                             "one_file": best_of(lambda: plain.execute(sql.format(f"read_parquet('{single}')"))
                                                 .fetchall())}
        count = con.execute("SELECT count(*) FROM frames").fetchall()[0][0]
        files = data_files(root)["frames"]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return {"row": "query", "videos": videos, "rows": count, "files": files, "write_s": write_seconds,
            "timings": timings, "ratio": {k: v["delta"] / v["one_file"] for k, v in timings.items()}}


def best_of(fn, repeat: int = 5) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


PLANNING = """
import datetime as dt, json, resource, sys, time
import pyarrow as pa
from pipeline.outputs.tables import Changes, TableCommitter, write_files
from pipeline.outputs.schema import PARTITION_SCHEMA, VIDEOS_SCHEMA
from pipeline.stages.incremental import REF_SCHEMA, plan_videos

root, known, new = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
ids = [f"v{i:08d}" for i in range(known + new)]
uris = [f"s3://archive/cam{i % 100}/v{i:08d}.mp4" for i in range(known + new)]
now = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
for start in range(0, known, 250_000):          # as compaction leaves it: a few large files
    n = min(known, start + 250_000) - start
    table = pa.table({
        "video_id": ids[start:start + n], "uri": uris[start:start + n], "run_id": ["r1"] * n, "status": ["ok"] * n,
        "size_bytes": [1000] * n, "version": ["1"] * n, "outputs_hash": ["h"] * n, "processed_at": [now] * n,
        "frames": [10] * n, "people": [5] * n, "tracks": [1] * n, "duration_s": [1.0] * n, "fps": [10.0] * n,
        "width": [64] * n, "height": [48] * n, "error": [None] * n}, schema=VIDEOS_SCHEMA)
    table = table.append_column(PARTITION_SCHEMA.field("date"), pa.array([now.date()] * n, pa.date32()))
    table = table.append_column(PARTITION_SCHEMA.field("source"), pa.array(["all"] * n, pa.string()))
    files = write_files(root, "videos", table, "r1")
    TableCommitter(root, "videos", "r1", {}, None).commit(Changes(files))
listed = pa.table({"uri": uris, "video_id": ids, "source": ["all"] * len(ids), "size": [1000] * len(ids),
                   "version": ["1"] * len(ids)}, schema=REF_SCHEMA)
import psutil
rss_before = psutil.Process().memory_info().rss
started = time.perf_counter()
plan = plan_videos(root, listed, "h")
seconds = time.perf_counter() - started
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"seconds": seconds, "todo": plan.todo.num_rows, "skipped": plan.skipped,
                  "rss_before_mb": rss_before / 2**20, "peak_rss_mb": peak / 2**20}))
"""


def planning(known: int, new: int = 1000) -> dict[str, Any]:
    """`plan_videos` in a fresh process over a videos table of `known` rows and a listing of known + new videos."""
    import subprocess

    root = Path(tempfile.mkdtemp(prefix="posepipe-scale-plan-"))
    try:
        out = subprocess.run([sys.executable, "-c", PLANNING, str(root), str(known), str(new)], check=True,
                             capture_output=True, text=True, cwd=Path(__file__).resolve().parents[2])
    finally:
        shutil.rmtree(root, ignore_errors=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return {"row": "planning", "known": known, "new": new} | result


def format_rows(rows: list[dict[str, Any]]) -> str:
    lines = ["| row | figures |", "|---|---|"]
    for r in rows:
        name = r["row"]
        if name.startswith("rerun"):
            text = (f"{r['videos']} videos ({r['skipped']} skipped, {r['failed']} failed): {r['seconds']:.2f} s, "
                    f"{r['commits']} commits; driver peak RSS {r['driver_rss_mb']:.0f} MB")
        elif name.startswith("many videos"):
            text = (f"{r['videos']} videos ({r['skipped']} skipped, {r['failed']} failed), {r['frames']} frames: "
                    f"{r['seconds']:.1f} s ({r['startup_s']:.1f} start-up, {r['processing_s']:.1f} processing = "
                    f"{1e3 * r['processing_s'] / max(1, r['videos'] - r['skipped']):.0f} ms/video, "
                    f"{r['compact_s']:.1f} compaction); driver peak RSS {r['driver_rss_mb']:.0f} MB, CPU "
                    f"{r['driver_cpu_s']:.1f} s; {r['commits']} commits")
            if "files" in r:
                text += "; data files " + ", ".join(f"{k} {v}" for k, v in r["files"].items())
        elif name.startswith("driver cost"):
            runs = "; ".join(f"S={x['frame_size']}: {x['frames']} frames in {x['processing_s']:.1f} s of processing, "
                             f"driver CPU {x['driver_processing_cpu_s']:.2f} s (Ray Data's executor thread "
                             f"{x['executor_cpu_s']:.2f} s); whole run {x['seconds']:.1f} s, driver CPU "
                             f"{x['driver_cpu_s']:.2f} s" for x in r["runs"])
            text = (f"fixed {100 * r['fixed_core_share']:.1f} % of a core + {r['per_frame_ms']:.3f} ms/frame "
                    f"({runs})")
        elif name == "query":
            text = (f"{r['rows']} rows of {r['videos']} videos in {r['files']} files (written in "
                    f"{r['write_s']:.1f} s): " + ", ".join(
                        f"{k} {1e3 * v['delta']:.1f} ms through `connect` ({r['ratio'][k]:.2f}x), "
                        f"{1e3 * v['folder']:.1f} ms as plain Parquet, {1e3 * v['one_file']:.1f} ms one file"
                        for k, v in r["timings"].items()))
        else:
            text = (f"{r['known']:,} known + {r['new']:,} new: {r['seconds']:.1f} s, {r['todo']} to process, "
                    f"peak RSS {r['peak_rss_mb']:.0f} MB ({r['peak_rss_mb'] - r['rss_before_mb']:.0f} MB above "
                    f"the listing)")
        lines.append(f"| {name} | {text} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = ArgumentParser("benchmark-scale", __doc__)
    p.add_argument("--videos", default="200,2000", help="comma list: video counts of the many-videos runs")
    p.add_argument("--frames", type=int, default=3, help="frames per short video")
    p.add_argument("--checkpoint", default="models/posepipe-synthetic.pt", help="model of the pipeline runs")
    p.add_argument("--driver-batch-sizes", default="32,128", help="comma list: decode.batch_size of the driver-cost "
                                                                  "runs")
    p.add_argument("--driver-videos", type=int, default=16, help="videos of the driver-cost archive")
    p.add_argument("--driver-seconds", type=float, default=4.0, help="seconds per driver-cost video, at 30 fps")
    p.add_argument("--query-videos", type=int, default=5000, help="videos in the query table")
    p.add_argument("--rows-per-video", type=int, default=85, help="frames rows per video in the query table")
    p.add_argument("--planning-videos", type=int, default=1_000_000, help="known videos of the planning row")
    p.add_argument("--skip", default="", help="comma list of rows to skip: many,driver,query,planning")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="extra run-config override for every pipeline run (repeatable)")
    p.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE, help="generated videos")
    p.add_argument("--out", type=Path, help="write the rows to OUT.json and the table to OUT.md")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging(logging.INFO)
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    overrides = [f"model.checkpoint={args.checkpoint}"] + args.overrides
    rows: list[dict[str, Any]] = []
    machine = machine_description()
    logger.info("scale benchmark on %s", machine)
    if "many" not in skip:
        rows += many_videos(args.cache_dir, [int(n) for n in args.videos.split(",")], args.frames, overrides)
    if "driver" not in skip:
        for batch_size in (int(n) for n in args.driver_batch_sizes.split(",")):
            rows.append(driver_cost(args.cache_dir, overrides, (128, 512), batch_size, args.driver_videos,
                                    args.driver_seconds))
    if "query" not in skip:
        rows.append(query(args.query_videos, args.rows_per_video))
    if "planning" not in skip:
        rows.append(planning(args.planning_videos))
    table = format_rows(rows)
    print(f"\n{machine}\n\n{table}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".json").write_text(json.dumps({"machine": machine, "rows": rows}, indent=1, default=str))
        args.out.with_suffix(".md").write_text(f"{machine}\n\n{table}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
