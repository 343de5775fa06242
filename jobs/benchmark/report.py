"""The benchmark's rows and what they say: one Measurement per row, the markdown table, the summary of ratios and
memory checks against their targets, and the files written with --out."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

COLUMNS = ("measurement", "config", "frames", "seconds", "frames_per_s", "driver_rss_mb", "workers_rss_mb",
           "object_store_mb", "note")


MEMORY_TARGET = 1.2      # peak RSS of 20 videos / 1 video must stay below this


RATIO_TARGET = 0.8       # pipeline / min(raw decode, raw model) must reach this (#26)
AFTER_PIPELINE = "raw model after pipeline"   # the raw model's row measured again right after the pipeline rows


@dataclass
class Measurement:
    """One row of the table; RSS and object-store columns are peaks over the measurement, None where not sampled."""

    measurement: str
    config: str
    frames: int
    seconds: float
    driver_rss_mb: float | None = None
    workers_rss_mb: float | None = None
    object_store_mb: float | None = None
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)  # JSON only: per-role peaks, GPU busy, ...

    @property
    def frames_per_s(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    def row(self) -> dict[str, Any]:
        """The table's columns (COLUMNS order), plus `extra` for the JSON file."""
        values = {**asdict(self), "frames_per_s": self.frames_per_s}
        return {**{c: values[c] for c in COLUMNS}, "extra": self.extra}


def format_value(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}" if abs(value) < 10 else f"{value:.1f}" if abs(value) < 1e4 else f"{value:.3g}"
    return str(value)


def markdown_table(rows: list[Measurement]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for m in rows:
        row = m.row()
        lines.append("| " + " | ".join(format_value(row[c]) for c in COLUMNS) + " |")
    return "\n".join(lines)


def find_row(rows: list[Measurement], name: str) -> Measurement | None:
    return next((m for m in rows if m.measurement == name), None)


def total_rss_mb(m: Measurement) -> float:
    return (m.driver_rss_mb or 0.0) + (m.workers_rss_mb or 0.0)


def job_rss_mb(m: Measurement) -> float | None:
    """Driver + decode actors + inference actors, each at its own peak.

    Summing per-role peaks, not one instant, keeps a short run fair: its decode actor may be done before the
    inference actor reaches its peak, which a long run's overlapping stages never are.
    """
    roles = m.extra.get("role_sum_peak_rss_mb")
    if m.driver_rss_mb is None or not roles:
        return None
    return m.driver_rss_mb + roles.get("FrameDecoder", 0.0) + roles.get("PoseEstimator", 0.0)


def summarize(rows: list[Measurement]) -> dict[str, Any]:
    """The targets: pipeline / min(raw decode, raw model), and peak RSS of 20 videos vs 1 video.

    The ratio is given three times: on wall time; on the marginal rate (frames added / seconds added between the
    1-video and the N-video run), which leaves out the fixed cost each run pays (actors start, model loads) if both
    runs pay the same; and on the steady rate of the N-video run (`steady_rate`), which needs no such assumption.
    With the raw model measured again after the pipeline (`AFTER_PIPELINE`), the three are also given against the
    mean of the two raw model rates (`bracketed`), and `raw_model_drift` is after / before.
    """
    out: dict[str, Any] = {}
    decode, model, pipe = find_row(rows, "raw decode"), find_row(rows, "raw model"), find_row(rows, "pipeline")
    one = find_row(rows, "pipeline 1 video")
    if decode and model and pipe:
        bound = min(decode.frames_per_s, model.frames_per_s)
        out["raw_bound_frames_per_s"] = bound
        out["ratio_wall"] = pipe.frames_per_s / bound if bound else None
        if one and pipe.frames > one.frames and pipe.seconds > one.seconds:
            marginal = (pipe.frames - one.frames) / (pipe.seconds - one.seconds)
            out["pipeline_marginal_frames_per_s"] = marginal
            out["fixed_cost_s"] = one.seconds - one.frames / marginal
            out["ratio_marginal"] = marginal / bound if bound else None
        steady = pipe.extra.get("steady_frames_per_s")
        if steady:
            out["pipeline_steady_frames_per_s"] = steady
            out["ratio_steady"] = steady / bound if bound else None
        out["ratio_target"] = RATIO_TARGET
        after = find_row(rows, AFTER_PIPELINE)
        if after and model.frames_per_s:
            out["raw_model_drift"] = after.frames_per_s / model.frames_per_s
            mean = (model.frames_per_s + after.frames_per_s) / 2
            both = min(decode.frames_per_s, mean)
            out["bracketed"] = {"raw_bound_frames_per_s": both, "ratio_wall": pipe.frames_per_s / both}
            for name, rate in (("ratio_marginal", out.get("pipeline_marginal_frames_per_s")),
                               ("ratio_steady", out.get("pipeline_steady_frames_per_s"))):
                if rate:
                    out["bracketed"][name] = rate / both
        raw_cpu = [m.extra.get("cpu_ms_per_frame") for m in (decode, model)]
        if one and None not in raw_cpu and "cpu" in pipe.extra and "cpu" in one.extra and pipe.frames > one.frames:
            per_frame = {role: 1e3 * (pipe.extra["cpu"][role]["cpu_s"] - one.extra["cpu"].get(role, {}).get("cpu_s", 0))
                         / (pipe.frames - one.frames) for role in pipe.extra["cpu"]}
            out["raw_cpu_ms_per_frame"] = sum(raw_cpu)
            out["pipeline_marginal_cpu_ms_per_frame"] = per_frame
            out["cpu_efficiency"] = sum(raw_cpu) / per_frame["all"] if per_frame.get("all") else None
    many = find_row(rows, "memory 20 videos") or (pipe if pipe and "20 videos" in pipe.config else None)
    if one and many:
        out["memory_ratio_20_vs_1"] = total_rss_mb(many) / total_rss_mb(one) if total_rss_mb(one) else None
        if job_rss_mb(one) and job_rss_mb(many):
            out["job_memory_ratio_20_vs_1"] = job_rss_mb(many) / job_rss_mb(one)
        out["memory_target"] = MEMORY_TARGET
    variants: dict[str, list[float]] = {}
    cpu_gains: dict[str, list[float]] = {}
    baseline = None
    for m in rows:  # each variant against the baseline run just before it (same round)
        if m.measurement == "variant baseline":
            baseline = m
        elif m.measurement.startswith("variant ") and baseline is not None and baseline.frames_per_s > 0:
            name = m.measurement[len("variant "):]
            variants.setdefault(name, []).append(m.frames_per_s / baseline.frames_per_s)
            cpu, base_cpu = m.extra.get("cpu", {}).get("all"), baseline.extra.get("cpu", {}).get("all")
            if cpu and base_cpu and cpu["cpu_s"] > 0:  # CPU per frame, baseline / variant: > 1 is cheaper
                cpu_gains.setdefault(name, []).append(base_cpu["cpu_s"] / baseline.frames / (cpu["cpu_s"] / m.frames))
    if variants:
        out["variant_speedup_vs_baseline"] = {name: float(np.median(v)) for name, v in variants.items()}
        out["variant_cpu_gain_vs_baseline"] = {name: float(np.median(v)) for name, v in cpu_gains.items()}
    short, long = find_row(rows, "memory short 1080p"), find_row(rows, "memory long 1080p")
    if short and long and total_rss_mb(short):
        out["memory_ratio_long_vs_short_1080p"] = total_rss_mb(long) / total_rss_mb(short)
        if job_rss_mb(short) and job_rss_mb(long):
            out["job_memory_ratio_long_vs_short_1080p"] = job_rss_mb(long) / job_rss_mb(short)
    return out


def format_summary(summary: dict[str, Any]) -> str:
    lines = []
    if "ratio_wall" in summary:
        lines.append(f"pipeline / min(raw decode, raw model) = {summary['ratio_wall']:.2f} on wall time"
                     + (f", {summary['ratio_marginal']:.2f} on the marginal rate "
                        f"({summary['pipeline_marginal_frames_per_s']:.1f} frames/s; fixed cost per run "
                        f"{summary['fixed_cost_s']:.1f} s)" if "ratio_marginal" in summary else "")
                     + (f", {summary['ratio_steady']:.2f} on the steady rate "
                        f"({summary['pipeline_steady_frames_per_s']:.1f} frames/s from the first video finished to "
                        f"the last)" if "ratio_steady" in summary else "")
                     + f" (target >= {RATIO_TARGET})")
    if "bracketed" in summary:
        bracketed = summary["bracketed"]
        lines.append(f"raw model after the pipeline runs {summary['raw_model_drift']:.2f} x its rate before; against "
                     f"the mean of the two ({bracketed['raw_bound_frames_per_s']:.1f} frames/s): "
                     + ", ".join(f"{bracketed[key]:.2f} {label}" for key, label in
                                 (("ratio_wall", "on wall time"), ("ratio_marginal", "marginal"),
                                  ("ratio_steady", "steady")) if key in bracketed))
    if summary.get("memory_ratio_20_vs_1") is not None:
        job = summary.get("job_memory_ratio_20_vs_1")
        lines.append(f"peak RSS 20 videos / 1 video = {summary['memory_ratio_20_vs_1']:.2f} driver + all Ray workers"
                     + (f", {job:.2f} driver + decode + inference actors (each at its peak)" if job else "")
                     + f" (target < {MEMORY_TARGET})")
    if summary.get("cpu_efficiency") is not None:
        per_frame = summary["pipeline_marginal_cpu_ms_per_frame"]
        lines.append(f"CPU per frame: raw decode + raw model {summary['raw_cpu_ms_per_frame']:.1f} ms, pipeline "
                     f"{per_frame['all']:.1f} ms (" + ", ".join(f"{k} {v:.1f}" for k, v in per_frame.items()
                                                            if k != "all")
                     + f"); efficiency {summary['cpu_efficiency']:.2f}")
    gains = summary.get("variant_cpu_gain_vs_baseline", {})
    for name, speedup in summary.get("variant_speedup_vs_baseline", {}).items():
        lines.append(f"variant {name}: {speedup:.2f} x the baseline's frames/s"
                     + (f", {gains[name]:.2f} x less CPU per frame" if name in gains else "")
                     + " (median over rounds)")
    if summary.get("memory_ratio_long_vs_short_1080p") is not None:
        job = summary.get("job_memory_ratio_long_vs_short_1080p")
        lines.append(f"peak RSS long / short 1080p video = {summary['memory_ratio_long_vs_short_1080p']:.2f} driver + "
                     f"all Ray workers" + (f", {job:.2f} driver + decode + inference actors" if job else ""))
    return "\n".join(lines)


def machine_description() -> dict[str, Any]:
    import platform

    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpus": os.cpu_count(), "cpu_model": cpu, "vector_isa": vector_isa(),
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(), "gpu": gpu, "torch": torch.__version__,
            "python": platform.python_version(), "load_average_1m": os.getloadavg()[0]}


def vector_isa() -> str:
    """The widest x86 vector ISA that programs here see in cpuid (numpy's probe): "AVX512F", "AVX2", ..., or ""
    elsewhere. Under infra/cpu/as-avx2 an AVX-512 machine reads "AVX2", as ONNX Runtime and LiteRT see it."""
    features = cpu_features()
    return next((isa for isa in ("AVX512F", "AVX2", "AVX", "SSE42") if features.get(isa)), "")


def cpu_features() -> dict[str, bool]:
    """numpy's runtime CPU feature probe (read from cpuid when numpy loads): {"AVX2": True, "AVX512F": False, ...}."""
    try:
        from numpy._core._multiarray_umath import __cpu_features__ as features  # numpy 2
    except ImportError:
        from numpy.core._multiarray_umath import __cpu_features__ as features  # numpy 1.26
    return dict(features)


def write_outputs(out: Path, rows: list[Measurement], summary: dict[str, Any], context: dict[str, Any]) -> None:
    """`out`.json (rows with extras, summary, machine and options) and `out`.md (the table and the summary)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"context": context, "summary": summary, "rows": [m.row() for m in rows]}
    out.with_suffix(".json").write_text(json.dumps(payload, indent=2, default=str))
    out.with_suffix(".md").write_text(f"{markdown_table(rows)}\n\n{format_summary(summary)}\n")
