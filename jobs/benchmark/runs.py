"""Whole-pipeline runs: `posepipe run` over an archive into a temporary output, with its resources sampled."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from jobs.benchmark.archive import archive_videos
from jobs.benchmark.report import Measurement
from jobs.benchmark.resources import ResourceSampler, format_cpu, wait_for_actors_to_exit


def pipeline_overrides(checkpoint: str, batch_size: int, device: str, precision: str,
                       decode_workers: int | None, extra: list[str] = ()) -> list[str]:
    sets = [f"model.checkpoint={checkpoint}", f"model.batch_size={batch_size}", f"model.device={device}",
            f"model.precision={precision}"]
    sets += [f"decode.workers={decode_workers}"] if decode_workers else []
    return sets + list(extra)


def pipeline_run(archive: Path, overrides: list[str], name: str = "pipeline", config_label: str = "") -> Measurement:
    """`jobs.run.run` over `archive` into a temporary output (removed after), with resources sampled throughout."""
    import ray

    from jobs.run import load_run_config, parse_args, run
    from pipeline.stages.plan import init_ray, pool_sizes

    output = Path(tempfile.mkdtemp(prefix="posepipe-bench-out-"))
    try:
        args = ["--input", str(archive), "--output", str(output)]
        for item in overrides:
            args += ["--set", item]
        config = load_run_config(parse_args(args))
        init_ray(config)
        pools = pool_sizes(config)
        # the previous run's actors, still exiting, and the workers its writes started would count in this run
        wait_for_actors_to_exit(idle_at_most=int(ray.cluster_resources().get("CPU", 1)))
        with ResourceSampler() as sampler:
            summary = run(config)
    finally:
        shutil.rmtree(output, ignore_errors=True)
    if summary.status != "clean":
        raise RuntimeError(f"benchmark pipeline run over {archive} was {summary.status}, expected clean: "
                           f"{summary.errors[:3]}; delete the cache folder to regenerate the videos")
    label = config_label or (f"decode {pools.decode} x {config.decode.threads} thr, infer {pools.infer} x "
                             f"{pools.threads or 'auto'} thr{' (GPU)' if pools.infer_gpus else ''}, "
                             f"B={config.model.batch_size}, "
                             f"{len(archive_videos(archive))} videos")
    cpu = sampler.cpu_seconds()
    extra = {"steady_frames_per_s": steady_rate(summary.finished),
             "role_peak_rss_mb": sampler.role_mb, "role_sum_peak_rss_mb": sampler.role_sum_mb,
             "role_max_processes": sampler.role_count, "job_rss_mb": sampler.job_mb,
             "workers_private_mb": sampler.workers_anon_mb, "role_peak_private_mb": sampler.role_private_mb,
             "workers_peak_by_role_mb": sampler.workers_peak_by_role_mb, "workers_peak_at_s": sampler.workers_peak_at_s,
             "cpu": cpu, "people": summary.people, "tracks": summary.tracks}
    return Measurement(name, label, summary.frames, summary.seconds, sampler.driver_mb, sampler.workers_mb,
                       sampler.store_mb, format_cpu(cpu, summary.frames), extra)


def steady_rate(finished: list[tuple[float, int]]) -> float | None:
    """Frames/s between the first and the last video to finish: the rate once the actors run, with no start-up in it.

    Args:
        finished: (seconds since the run started, frames) per video, as `RunSummary.finished`.
    Returns None for fewer than 3 videos (too few to tell a rate from their ordering).
    """
    if len(finished) < 3:
        return None
    times = sorted(finished)
    span = times[-1][0] - times[0][0]
    return sum(frames for _, frames in times[1:]) / span if span > 0 else None
