"""The raw rates: decoding alone and the model alone, each in as many processes as the pipeline's pools, started
together behind a barrier so that they compete for the machine as the pipeline's actors do."""

from __future__ import annotations

import contextlib
import math
import multiprocessing as mp
import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np

from jobs.benchmark.report import Measurement


def _worker_entry(target: Callable, args: tuple, barrier, results) -> None:
    try:
        results.put(("ok", target(*args, barrier)))
    except BaseException as exc:  # reported to the parent, which raises with the worker's message
        barrier.abort()
        results.put(("error", f"{type(exc).__name__}: {exc}"))


def run_workers(target: Callable, args_list: list[tuple], timeout_s: float = 1800.0) -> list[dict]:
    """Run `target(*args, barrier)` in one fresh (spawned) process per args tuple, and collect their results.

    Workers load what they need, then meet at the barrier, so imports and warm-up stay out of the timings; each
    returns a dict with its own timed phases. Spawned processes keep the raw rates free of the driver's threads and
    memory, as the pipeline's actors are.
    """
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(len(args_list)), ctx.Queue()
    procs = [ctx.Process(target=_worker_entry, args=(target, args, barrier, results), daemon=True)
             for args in args_list]
    for proc in procs:
        proc.start()
    out, errors = [], []
    try:
        for _ in procs:
            status, value = results.get(timeout=timeout_s)
            (out if status == "ok" else errors).append(value)
    finally:
        for proc in procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
    if errors:
        raise RuntimeError(f"benchmark worker failed: {errors[0]}")
    return out


def combine_phase(results: list[dict], phase: str) -> tuple[int, float]:  # decode: workers share one queue
    """Frames and wall seconds of one phase over all workers: first start to last end (shared monotonic clock)."""
    frames = sum(r[phase]["frames"] for r in results)
    seconds = max(r[phase]["end"] for r in results) - min(r[phase]["start"] for r in results)
    return frames, seconds


def decode_worker(tasks, size: int, batch_size: int, threads: int, sampling: dict, pad: bool, barrier) -> dict:
    """Decode videos from the shared queue until it is empty, as a decode actor would (one video at a time)."""
    import decord  # noqa: F401  (loaded before the barrier: import time is not decode time)

    from pipeline.video import open_stream, sample_frame_indices

    barrier.wait()
    start, cpu, frames, nbytes = time.monotonic(), time.process_time(), 0, 0
    while (path := tasks.get()) is not None:
        stream = open_stream(path, size, threads, pad)  # the decode stage's choice of backend (decord, else PyAV)
        indices = sample_frame_indices(stream.num_frames, stream.fps, **sampling)
        for chunk, _, batch in stream.batches(indices, batch_size):  # batch: (b, h, w, 3) uint8
            frames, nbytes = frames + len(chunk), nbytes + batch.nbytes
    return {"decode": {"frames": frames, "start": start, "end": time.monotonic(), "cpu_s": time.process_time() - cpu,
                       "bytes": nbytes}}


def raw_decode_rate(videos: list[Path], size: int, workers: int, batch_size: int = 32, threads: int = 1,
                    sampling: dict | None = None, pad: bool = True) -> Measurement:
    """decord decode + resize (+ letterbox with `pad`, as for the bottom-up net) of every video, in `workers`
    processes pulling from one queue.

    `sampling` takes `sample_frame_indices`' keywords (every_nth, target_fps, max_frames) as the decode stage does.
    """
    ctx = mp.get_context("spawn")
    tasks = ctx.Queue()
    for path in videos:
        tasks.put(str(path))
    for _ in range(workers):
        tasks.put(None)
    results = run_workers(decode_worker, [(tasks, size, batch_size, threads, sampling or {}, pad)] * workers)
    frames, seconds = combine_phase(results, "decode")
    row = Measurement("raw decode", f"{workers} proc x {threads} thr, S={size}{'' if pad else ' unpadded'}, "
                                    f"{len(videos)} videos", frames, seconds)
    row.extra["cpu_ms_per_frame"] = 1e3 * sum(r["decode"]["cpu_s"] for r in results) / max(1, frames)
    row.extra["bytes_per_frame"] = sum(r["decode"]["bytes"] for r in results) / max(1, frames)  # as they travel
    row.note = (f"CPU {row.extra['cpu_ms_per_frame']:.1f} ms/frame; "
                f"{row.extra['bytes_per_frame'] / 1e6:.2f} MB per frame in the object store")
    return row


def _cuda_sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def model_worker(checkpoint: str, batch_size: int, device: str, precision: str, threads: int | None,
                 compile_model: bool, min_seconds: float, seed: int, frames: np.ndarray | None, size: int,
                 picture: tuple[int, int] | None, barrier) -> dict:
    """Time the inference actor's work on uint8 frames: the model alone, and the whole `__call__`.

    The model alone is the network's forward on a normalised device tensor for a bottom-up model, and the whole
    people finding (`PoseEstimator.predict`: detector, crops, landmark nets, decoding) for a top-down one.
    `frames` (B, S, S, 3) are decoded video frames of pictures `picture` (width, height), or None for random ones
    (a trained model finds no people in noise, so random input leaves out most of the people cost; frames with
    people put it in).

    Both use the actor class itself, so its settings apply (threads, device, autocast, channels_last on cuda). The
    two steps alternate batch by batch, so a change in background load hits both alike. On cuda each step is also
    timed with CUDA events, and GPU utilisation is sampled with pynvml when it is installed.

    Returns per phase: frames, busy seconds (sum of step times), best step seconds, CPU seconds of the process
    (all its threads) and GPU milliseconds.
    """
    import torch

    from pipeline.models.pose_model import BottomUpModel
    from pipeline.models.runtime import run_network
    from pipeline.pose.letterbox import Letterbox, letterbox_frames, normalize
    from pipeline.stages.batch import frame_batch, pack
    from pipeline.stages.infer import PoseEstimator

    own_size = frames is not None and frames.shape[1:3] != (size, size)  # a top-down run's frames, as they travel
    estimator = PoseEstimator(checkpoint, device=device, precision=precision, threads=threads,
                              frame_size=size if own_size else None)
    model, dev = estimator.model, estimator.device
    rng = np.random.default_rng(seed)
    shape = frames.shape[1:] if frames is not None else (size, size, 3)
    travelling = (rng.integers(0, 256, (batch_size, *shape), dtype=np.uint8) if frames is None
                  else np.resize(frames, (batch_size, *shape)))             # repeated if short
    width, height = picture or (size, size)
    batch = frame_batch("bench", np.arange(batch_size), np.zeros(batch_size), travelling, width, height)
    images = letterbox_frames(torch.from_numpy(travelling), Letterbox.fit(width, height, size)).numpy() \
        if own_size else travelling                                          # (B, S, S, 3)
    if compile_model:
        model.compile()
    if isinstance(model, BottomUpModel):
        x = normalize(torch.from_numpy(images).to(dev), model.mean, model.std)  # (B, 3, S, S)

        def forward() -> None:
            run_network(model.network, x, model.dtype, model.flip_test)  # as `find_people` runs it
    else:
        chains = [list(range(batch_size))]                                  # one video, as a decoded batch is

        def forward() -> None:
            estimator.predict(images, batch["width"], batch["height"], chains)

    steps = {"forward": forward, "call": lambda: estimator(pack(batch))}  # as a run hands it
    for _ in range(3 if compile_model else 2):  # warm-up: allocator, oneDNN/cudnn kernels, compilation
        for step in steps.values():
            step()
    _cuda_sync(dev)
    phases = {name: {"frames": 0, "seconds": 0.0, "best": math.inf, "cpu_s": 0.0, "gpu_ms": 0.0} for name in steps}
    barrier.wait()
    started = time.monotonic()
    with gpu_utilisation_sampler(dev) as utilisation:
        while min(p["frames"] for p in phases.values()) < 3 * batch_size or time.monotonic() - started < min_seconds:
            for name, step in steps.items():
                events = [torch.cuda.Event(enable_timing=True) for _ in range(2)] if dev.type == "cuda" else []
                begin, cpu = time.perf_counter(), time.process_time()
                if events:
                    events[0].record()
                step()
                if events:
                    events[1].record()
                    events[1].synchronize()
                    phases[name]["gpu_ms"] += events[0].elapsed_time(events[1])
                elapsed = time.perf_counter() - begin
                phase = phases[name]
                phase["frames"] += batch_size
                phase["seconds"] += elapsed
                phase["best"] = min(phase["best"], elapsed)
                phase["cpu_s"] += time.process_time() - cpu
    dtype = str(estimator.model_dtype).removeprefix("torch.")  # what `precision` resolved to here
    glue = {} if isinstance(model, BottomUpModel) else person_finding_glue(model.pose, forward, dev)
    return {**phases, **glue, "gpu_util": utilisation.get("mean"), "device": str(dev),
            "threads": torch.get_num_threads(), "dtype": dtype}


def person_finding_glue(pose, forward: Callable[[], None], device, repeats: int = 3) -> dict:
    """Where a top-down model's time goes besides its nets, for `forward` (one batch's person finding): the
    fraction of its wall time outside the nets' forwards, the batch sizes that reach each net, and the torch
    operators it launches (a profiler count of top-level operators: outside the nets under ONNX Runtime, whose
    nets launch none; a torch net's own operators are counted too)."""
    import torch

    seconds, sizes = {"detector": 0.0, "landmarks": 0.0}, {"detector": [], "landmarks": []}
    nets = {"detector": pose.detector, "landmarks": pose.landmarks}

    def timed(name: str, net):
        def call(x):
            _cuda_sync(device)
            begin = time.perf_counter()
            out = net(x)
            _cuda_sync(device)
            seconds[name] += time.perf_counter() - begin
            sizes[name].append(len(x))
            return out
        return call

    pose.detector, pose.landmarks = timed("detector", nets["detector"]), timed("landmarks", nets["landmarks"])
    try:
        begin = time.perf_counter()
        for _ in range(repeats):
            forward()
        _cuda_sync(device)
        total = time.perf_counter() - begin
    finally:
        pose.detector, pose.landmarks = nets["detector"], nets["landmarks"]
    in_nets = seconds["detector"] + seconds["landmarks"]
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        forward()
    top_level = [e for e in profile.events() if e.name.startswith("aten::")
                 and not (e.cpu_parent is not None and e.cpu_parent.name.startswith("aten::"))]
    return {"glue_fraction": 1 - in_nets / total, "net_batches": {k: v[:len(v) // repeats] for k, v in sizes.items()},
            "op_launches": len(top_level), "nets_runtime": type(nets["landmarks"]).__name__}


@contextlib.contextmanager
def gpu_utilisation_sampler(device, interval_s: float = 0.1):
    """Mean GPU utilisation (%) from pynvml while the block runs; yields a dict filled in at exit (empty on CPU)."""
    result: dict[str, float] = {}
    try:
        import pynvml
    except ImportError:
        pynvml = None
    if device.type != "cuda" or pynvml is None:
        yield result
        return
    pynvml.nvmlInit()
    handle = pynvml.nvmlDeviceGetHandleByIndex(device.index or 0)
    samples: list[int] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(interval_s):
            samples.append(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield result
    finally:
        stop.set()
        thread.join()
        pynvml.nvmlShutdown()
        if samples:
            result["mean"] = float(np.mean(samples))


def raw_model_rates(checkpoint: str, batch_size: int, workers: int, threads: int | None, device: str = "auto",
                    precision: str = "auto", compile_model: bool = False, min_seconds: float = 5.0,
                    frames: np.ndarray | None = None, size: int | None = None,
                    picture: tuple[int, int] | None = None) -> tuple[Measurement, Measurement]:
    """(forward only, whole actor call) frames/s of `workers` inference processes running side by side.

    The rate is the sum of the workers' own rates (frames / busy seconds); `extra.best_frames_per_s` is the rate of
    the fastest batch, an estimate of what an unloaded machine gives when other jobs share the CPU.
    """
    if size is None:
        from pipeline.models.checkpoint import read_metadata, resolve_checkpoint

        size = frames.shape[1] if frames is not None else int(read_metadata(resolve_checkpoint(checkpoint))
                                                               ["input_size"])
    args = [(checkpoint, batch_size, device, precision, threads, compile_model, min_seconds, seed, frames, size,
             picture) for seed in range(workers)]
    results = run_workers(model_worker, args)
    dev, thr, dtype = results[0]["device"], results[0]["threads"], results[0]["dtype"]
    source = "video" if frames is not None else "random"
    config = (f"{workers} proc x {thr} thr, B={batch_size}, {dev} {dtype}, {source} input"
              f"{', compiled' if compile_model else ''}")
    rows = []
    for phase, name in (("forward", "raw model fwd"), ("call", "raw model")):
        rate = sum(r[phase]["frames"] / r[phase]["seconds"] for r in results)
        count = sum(r[phase]["frames"] for r in results)
        row = Measurement(name, config, count, count / rate)
        row.extra["best_frames_per_s"] = sum(batch_size / r[phase]["best"] for r in results)
        row.extra["cpu_ms_per_frame"] = 1e3 * sum(r[phase]["cpu_s"] for r in results) / count
        if dev.startswith("cuda"):
            busy = [r["forward"]["gpu_ms"] / 1e3 / r["forward"]["frames"] * r[phase]["frames"] / r[phase]["seconds"]
                    for r in results]  # GPU time of a forward, per wall second of this phase
            row.extra["gpu_busy_forward_fraction"] = float(np.mean(busy))
            row.extra["gpu_util_percent"] = results[0]["gpu_util"]  # pynvml, over both steps' loop
            row.note = f"forward keeps the GPU busy {row.extra['gpu_busy_forward_fraction']:.0%} of this step"
        else:
            row.note = (f"CPU {row.extra['cpu_ms_per_frame']:.1f} ms/frame; "
                        f"best batch {row.extra['best_frames_per_s']:.1f} frames/s")
        if phase == "forward" and "glue_fraction" in results[0]:
            glue = results[0]
            row.extra.update({key: glue[key] for key in ("glue_fraction", "net_batches", "op_launches",
                                                          "nets_runtime")})
            row.note += (f"; outside the nets {glue['glue_fraction']:.0%}, {glue['op_launches']} torch ops "
                         f"per batch; nets ({glue['nets_runtime']}) got batches: detector "
                         f"{glue['net_batches']['detector']}, landmarks {glue['net_batches']['landmarks']}")
        rows.append(row)
    return rows[0], rows[1]
