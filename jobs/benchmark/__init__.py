"""`posepipe benchmark`: how fast the pipeline runs against what its parts can do alone, on this machine, in one run.

Rows of the table (all rates in frames/s; every row of one run is measured on the same machine, minutes apart):
    raw decode        decord + letterbox alone (`pipeline.video.open_stream`), in as many processes as the
                      pipeline's decode pool, over the benchmark archive
    raw model fwd     the network's forward alone on a normalised device tensor, per inference-pool process
    raw model         the inference actor's whole work (`PoseEstimator.__call__`): for a top-down model frames as
                      they travel (at their own size) letterboxed on the device; normalise, forward, peaks,
                      grouping and the per-person rows, on random uint8 frames
    pipeline          `jobs.run.run` on the archive: decode -> infer -> grouping -> tracking -> Parquet
    pipeline 1 video  the same job on one video of the archive; with the row above it gives the marginal rate
                      (the fixed cost of a run, actors starting and the model loading, left out) and the memory
                      check (peak RSS of 1 vs 20 videos of the same length)
    raw model after pipeline  the raw model's whole call again, right after the pipeline rows: the summary also
                      gives the ratios against the mean of the two raw model rows, which brackets the pipeline in
                      time (the machine's speed can move by 10-20 % within minutes)
    scaling           the pipeline with 1, 2, ... decode actors
    memory ...        20 videos when the archive has another count; with --long a short and a long 1080p video
    variant ...       with --variant: the pipeline under other settings, alternating with the baseline --repeat
                      times, so that background load drifting over minutes hits every configuration alike
Peak RSS is sampled with psutil over the driver's process tree (Ray's node processes and workers are its children);
object-store use is Ray's plasma usage from the raylet's memory summary, sampled alongside. So is CPU time per role
(driver, decode, infer, ray): CPU ms per frame say where the pipeline spends work beyond the raw stages.

On a shared machine compare rows of one run only; wall-clock rates move with other people's load (so, less, do
CPU times: cache and memory-bandwidth contention). `docs/performance.md` has the method and the findings.

Shape letters: B = frames per batch, S = square model input (pixels).
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from pathlib import Path
from typing import Any

from jobs.benchmark.archive import DEFAULT_CACHE, archive_videos, benchmark_archive, default_checkpoint, video_frames
from jobs.benchmark.raw import raw_decode_rate, raw_model_rates
from jobs.benchmark.report import (
    AFTER_PIPELINE,
    Measurement,
    format_summary,
    machine_description,
    markdown_table,
    summarize,
    write_outputs,
)
from jobs.benchmark.runs import pipeline_overrides, pipeline_run
from jobs.cli import ArgumentParser, configure_logging, fail

logger = logging.getLogger("posepipe.benchmark")


# --- benchmark videos -------------------------------------------------------------------------------------------------


# --- parallel timed workers (raw rates) -----------------------------------------------------------------------------


# --- pipeline runs with resource sampling ---------------------------------------------------------------------------


# --- report -----------------------------------------------------------------------------------------------------------


# --- main ------------------------------------------------------------------------------------------------------------

def parse_size(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"(\d+)x(\d+)", text.strip())
    if not match or int(match.group(1)) < 16 or int(match.group(2)) < 16:
        raise argparse.ArgumentTypeError(f"expected a video size WIDTHxHEIGHT of at least 16x16, e.g. 640x360; "
                                         f"got {text!r}")
    return int(match.group(1)), int(match.group(2))


def parse_int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of positive integers, e.g. 1,2; "
                                         f"got {text!r}")
    return values


def parse_variant(text: str) -> tuple[str, list[str]]:
    name, sep, rest = text.partition("=")
    overrides = [item.strip() for item in rest.split(",") if item.strip()]
    if not sep or not name.strip() or not overrides or any("=" not in item for item in overrides):
        raise argparse.ArgumentTypeError(f"expected NAME=KEY=VALUE[,KEY=VALUE], e.g. threads2=model.threads=2; "
                                         f"got {text!r}")
    return name.strip(), overrides


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = ArgumentParser("benchmark", __doc__)
    p.add_argument("--videos", type=int, default=20, help="videos in the benchmark archive")
    p.add_argument("--seconds", type=float, default=2.0, help="length of each video, seconds at 30 fps")
    p.add_argument("--size", type=parse_size, default="640x360", help="video size WxH")
    p.add_argument("--checkpoint", help="model name or checkpoint (default: the run's default model when imported, "
                                        "else models/posepipe-synthetic.pt, else a random-weights PoseNet)")
    p.add_argument("--batch-size", type=int, default=16, help="frames per forward pass (model.batch_size)")
    p.add_argument("--batch-sizes", type=parse_int_list, help="also measure the raw model at these batch sizes")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                   help="where the model runs, as model.device")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"),
                   help="autocast of the network, as model.precision (default: a run's, auto)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model in the raw model measurement")
    p.add_argument("--decode-workers", type=parse_int_list, default="1,2",
                   help="decode actors of the scaling runs")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="extra run-config override for every pipeline run, e.g. model.threads=2 (repeatable)")
    p.add_argument("--model-input", choices=("random", "video"), default="random",
                   help="raw model input: random uint8 frames, or frames of the first benchmark video (people in "
                        "view, so grouping does its real work)")
    p.add_argument("--model-seconds", type=float, default=5.0, help="minimum timed seconds per raw model phase")
    p.add_argument("--skip", default="", help="comma list of parts to skip: raw,nets,pipeline,scaling,memory "
                                              "(nets: the top-down model's detector and landmark nets alone)")
    p.add_argument("--variant", dest="variants", action="append", type=parse_variant, default=[],
                   metavar="NAME=KEY=VALUE[,KEY=VALUE]",
                   help="a pipeline configuration to compare with the baseline, e.g. threads2=model.threads=2; "
                        "runs alternate baseline, variant, ... --repeat times (repeatable)")
    p.add_argument("--repeat", type=int, default=2, help="rounds of baseline + variants")
    p.add_argument("--long", action="store_true", help="also run a long 1080p video to show memory stays bounded")
    p.add_argument("--long-seconds", type=float, default=60.0, help="length of the --long video")
    p.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE, help="generated videos")
    p.add_argument("--out", type=Path, help="write the table to OUT.json and OUT.md")
    return p.parse_args(argv)


def run_benchmark(args: argparse.Namespace) -> tuple[list[Measurement], dict[str, Any]]:
    """All measurements of one benchmark run, in order; returns the rows and the context (machine, options)."""
    from pipeline.config import RunConfig, load_config
    from pipeline.models.checkpoint import read_metadata, resolve_checkpoint
    from pipeline.stages.plan import is_topdown

    width, height = args.size
    checkpoint, trained = (resolve_checkpoint(args.checkpoint), True) if args.checkpoint \
        else default_checkpoint(args.cache_dir)
    meta = read_metadata(checkpoint)
    topdown = is_topdown(meta)
    size = int(meta["input_size"])
    people = "real" if topdown else "synthetic"                    # footage the model can find people in
    archive = benchmark_archive(args.cache_dir, args.videos, args.seconds, width, height, people=people)
    single = benchmark_archive(args.cache_dir, 1, args.seconds, width, height, people=people)
    videos = archive_videos(archive)
    context = {"machine": machine_description(), "checkpoint": checkpoint, "trained_checkpoint": trained,
               "input_size": size, "archive": str(archive), "videos": len(videos), "video_size": f"{width}x{height}",
               "seconds_per_video": args.seconds, "overrides": args.overrides, "people": people}
    logger.info("benchmark on %s", context["machine"])

    # the pools the pipeline will use, resolved as jobs.run does (Ray is started here, once, for every run)
    import ray

    from pipeline.stages.plan import init_ray, pool_sizes

    base = pipeline_overrides(checkpoint, args.batch_size, args.device, args.precision, None, args.overrides)
    config = load_config(RunConfig, None, base)
    started_ray = not ray.is_initialized()
    init_ray(config)
    pools = pool_sizes(config)
    rows: list[Measurement] = []
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    try:
        model_frames = video_frames(videos[0], size, max(args.batch_sizes or [args.batch_size]), pad=not topdown) \
            if args.model_input == "video" or topdown else None
        if "raw" not in skip:
            sampling = dict(every_nth=config.decode.every_nth, target_fps=config.decode.fps,
                            max_frames=config.decode.max_frames)
            rows.append(raw_decode_rate(videos, size, pools.decode, config.decode.batch_size,
                                        config.decode.threads, sampling, pad=not topdown))
            for batch_size in dict.fromkeys([args.batch_size] + (args.batch_sizes or [])):
                rows += raw_model_rates(checkpoint, batch_size, pools.infer, pools.threads, args.device,
                                        args.precision, args.compile, args.model_seconds, model_frames, size,
                                        (width, height))
        if topdown and "nets" not in skip:
            from jobs.benchmark.topdown import raw_net_rates
            from pipeline.models.blazepose.weights import MODEL_NAMES, cached_checkpoint

            variants = {v: str(cached_checkpoint(name)) for name, v in MODEL_NAMES.items()
                        if cached_checkpoint(name).is_file()} or {meta["variant"]: checkpoint}
            rows += raw_net_rates(variants, sorted({args.batch_size, *(args.batch_sizes or [])}), args.device,
                                  args.precision, pools.threads or 1, args.compile, args.model_seconds / 2)
        if "pipeline" not in skip:
            rows.append(pipeline_run(single, base, "pipeline 1 video"))
            rows.append(pipeline_run(archive, base, "pipeline"))
            if "raw" not in skip:  # the machine's speed moves within minutes: the raw model again, right after
                _, after = raw_model_rates(checkpoint, args.batch_size, pools.infer, pools.threads, args.device,
                                           args.precision, args.compile, args.model_seconds, model_frames, size,
                                           (width, height))
                after.measurement = AFTER_PIPELINE
                rows.append(after)
        for repetition in range(args.repeat if args.variants else 0):  # baseline and variants, interleaved
            for name, overrides in [("baseline", [])] + args.variants:
                rows.append(pipeline_run(archive, base + overrides, f"variant {name}",
                                         f"run {repetition + 1}: {' '.join(overrides) or 'as configured'}"))
        if "scaling" not in skip:
            for n in args.decode_workers:
                if n == pools.decode and not config.decode.workers:
                    continue  # the pipeline row is this run
                overrides = base + [f"decode.workers={n}"]
                rows.append(pipeline_run(archive, overrides, "scaling", f"decode {n}, {len(videos)} videos"))
        if "memory" not in skip:
            if len(videos) != 20:  # else the pipeline row is the 20-video run
                twenty = benchmark_archive(args.cache_dir, 20, args.seconds, width, height)
                rows.append(pipeline_run(twenty, base, "memory 20 videos"))
            if args.long:  # the same resolution short and long: memory must not grow with length
                for name, seconds in (("memory short 1080p", args.seconds), ("memory long 1080p", args.long_seconds)):
                    archive_1080 = benchmark_archive(args.cache_dir, 1, seconds, 1920, 1080, preset="veryfast")
                    rows.append(pipeline_run(archive_1080, base, name, f"1 video 1920x1080, {seconds:g} s"))
    finally:
        if started_ray:
            ray.shutdown()
    return rows, context


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging(logging.INFO)
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # per-second progress lines would bury the table
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # the benchmark's own local cluster
    if args.videos < 1 or args.seconds <= 0 or args.batch_size < 1:
        return fail("--videos, --seconds and --batch-size must be positive")
    from pipeline.config import ModelSettings

    args.precision = args.precision or ModelSettings().precision
    rows, context = run_benchmark(args)
    summary = summarize(rows)
    print(f"\n{markdown_table(rows)}\n\n{format_summary(summary)}")
    if args.out:
        write_outputs(args.out, rows, summary, context)
        print(f"written {args.out.with_suffix('.json')} and {args.out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
