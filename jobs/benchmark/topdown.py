"""Benchmark rows of the top-down model's nets: the detector and each landmark variant alone, in torch at the
benchmark's batch sizes and under LiteRT (the reference runtime, one input per invoke), side by side on the same
threads. Rates are inputs/s: detector views (224x224) and landmark crops (256x256, one per person).

    raw detector          forward of B detector views (the actor batches every view of its frames), in torch and,
                          for fp32 on a CPU, ONNX Runtime (the actor's default there)
    raw landmarks NAME    forward of B crops of landmark net NAME (lite, full or heavy), likewise
    litert ...            the same .tflite graph under ai-edge-litert, when installed (a test dependency)
    onnxruntime/litert    where both apply: ONNX Runtime (as the actor runs it, at the largest batch size) and LiteRT
                          in one process, one batch each in turn (A B B A ...); the note gives the median of the
                          pairs' ratios of time per input, and the ratio of the two best batches. Rows timed minutes
                          apart in separate processes moved by up to 1.6x between runs on a shared machine, and
                          rounds of a second each by 1.0-1.2x; neighbouring batches see the same background load.

Each net runs in its own spawned process (`run_workers`), as the raw model rows do.
"""

from __future__ import annotations

import time
from typing import Callable

import numpy as np

from jobs.benchmark.raw import run_workers
from jobs.benchmark.report import Measurement


def net_inputs(net: str, batch: int, seed: int) -> np.ndarray:
    """Real people as a net sees them: crops of the shipped photos, (B, S, S, 3) float in the net's range."""
    import cv2

    from pipeline.photos import FOLDER, PHOTOS

    size = 224 if net == "detector" else 256
    images = [cv2.resize(cv2.cvtColor(cv2.imread(str(FOLDER / name)), cv2.COLOR_BGR2RGB), (size, size))
              for name in PHOTOS]
    rng = np.random.default_rng(seed)
    x = np.stack([images[i % len(images)] for i in rng.permutation(batch)]).astype(np.float32)
    return x / 127.5 - 1.0 if net == "detector" else x / 255.0


def torch_net_worker(checkpoint: str, net: str, batch: int, device: str, precision: str, threads: int,
                     compile_model: bool, runtime: str, min_seconds: float, barrier) -> dict:
    """Time the forward of one of the checkpoint's nets ("detector" or "landmarks") on batches of real crops, as
    `runtime` (torch or onnxruntime) runs it in the inference actor."""
    import torch

    from pipeline.models.pose_model import load_pose_model
    from pipeline.models.runtime import inference_device

    torch.set_num_threads(threads)
    dev = inference_device(device)
    model, meta = load_pose_model(checkpoint, dev, precision, runtime=runtime, compile_model=compile_model)
    if compile_model:
        model.compile()
    module = model.pose.detector if net == "detector" else model.pose.landmarks
    x = torch.from_numpy(net_inputs(net, batch, 0)).to(dev).permute(0, 3, 1, 2)
    x = model.pose.net_input(x)

    def step() -> None:
        with torch.inference_mode(), model.pose.autocast():
            module(x)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    for _ in range(3 if compile_model else 2):
        step()
    barrier.wait()
    return timed(step, batch, min_seconds) | {"variant": meta["variant"], "device": str(dev),
                                              "dtype": str(model.pose.dtype or torch.float32).removeprefix("torch.")}


def litert_invokes(graph: bytes, inputs: np.ndarray, threads: int) -> Callable[[], None]:
    """A step that runs a .tflite graph under LiteRT on each of `inputs` in turn (the graphs take batch 1)."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=graph, num_threads=threads)
    interpreter.allocate_tensors()
    index = interpreter.get_input_details()[0]["index"]

    def step() -> None:
        for i in range(len(inputs)):
            interpreter.set_tensor(index, inputs[i:i + 1])
            interpreter.invoke()

    return step


def litert_worker(graph: bytes, net: str, threads: int, min_seconds: float, barrier) -> dict:
    """Time LiteRT invokes of a .tflite graph, one real crop per invoke."""
    step = litert_invokes(graph, net_inputs(net, 1, 0), threads)
    step()
    barrier.wait()
    return timed(step, 1, min_seconds)


def runtime_pair_worker(checkpoint: str, net: str, batch: int, graph: bytes, threads: int, min_seconds: float,
                        barrier) -> dict:
    """ONNX Runtime (the actor's CPU runtime, batches of `batch`) against LiteRT (one input per invoke) on the same
    net and threads, one batch each in turn, in A B B A order (neither always follows the other), for at least
    `min_seconds` and PAIR_MIN_STEPS batches each: milliseconds per input of each batch, in pairs."""
    import torch

    from pipeline.models.pose_model import load_pose_model

    torch.set_num_threads(threads)
    model, _ = load_pose_model(checkpoint, torch.device("cpu"), "fp32", runtime="onnxruntime")
    module = model.pose.detector if net == "detector" else model.pose.landmarks
    inputs = net_inputs(net, batch, 0)
    x = model.pose.net_input(torch.from_numpy(inputs).permute(0, 3, 1, 2))
    steps = {"onnxruntime": lambda: module(x), "litert": litert_invokes(graph, inputs, threads)}
    for step in steps.values():
        step()
    barrier.wait()
    times: dict[str, list[float]] = {name: [] for name in steps}
    begin = time.perf_counter()
    while len(times["litert"]) < PAIR_MIN_STEPS or time.perf_counter() - begin < min_seconds:
        for name in (steps if len(times["litert"]) % 2 == 0 else reversed(steps)):
            start = time.perf_counter()
            steps[name]()
            times[name].append(1e3 * (time.perf_counter() - start) / batch)
    return times


PAIR_MIN_STEPS = 6


def pair_row(name: str, batch: int, threads: int, times: dict[str, list[float]]) -> Measurement:
    onnx, lite = np.array(times["onnxruntime"]), np.array(times["litert"])
    per_input = float(np.median(onnx))
    row = Measurement(f"onnxruntime/litert {name}",
                      f"B={batch} / B=1, {threads} thr, cpu float32, {len(onnx)} alternating batches",
                      len(onnx) * batch, float(onnx.sum()) * batch / 1e3)
    row.extra.update(ms_per_input=per_input, onnxruntime_ms=per_input, litert_ms=float(np.median(lite)),
                     ratio=float(np.median(onnx / lite)), best_ratio=float(onnx.min() / lite.min()), steps=times)
    row.note = (f"ONNX Runtime {row.extra['onnxruntime_ms']:.2f} / LiteRT {row.extra['litert_ms']:.2f} ms per "
                f"{'view' if name == 'detector' else 'crop'} (medians); ratio {row.extra['ratio']:.2f}, "
                f"of the best batches {row.extra['best_ratio']:.2f}")
    return row


def timed(step, batch: int, min_seconds: float) -> dict:
    """Run `step` until `min_seconds` and at least 3 steps have passed; inputs, seconds and the best step."""
    count, seconds, best = 0, 0.0, float("inf")
    while count < 3 * batch or seconds < min_seconds:
        begin = time.perf_counter()
        step()
        elapsed = time.perf_counter() - begin
        count, seconds, best = count + batch, seconds + elapsed, min(best, elapsed)
    return {"inputs": count, "seconds": seconds, "best": best}


def net_row(name: str, config: str, result: dict, batch: int) -> Measurement:
    row = Measurement(name, config, result["inputs"], result["seconds"])
    row.extra["ms_per_input"] = 1e3 * result["seconds"] / result["inputs"]
    row.extra["best_inputs_per_s"] = batch / result["best"]
    row.note = f"{row.extra['ms_per_input']:.2f} ms per {'view' if 'detector' in name else 'crop'}"
    return row


def raw_net_rates(checkpoints: dict[str, str], batch_sizes: list[int], device: str, precision: str, threads: int,
                  compile_model: bool = False, min_seconds: float = 3.0, litert: bool = True) -> list[Measurement]:
    """Rows for the detector (of the first checkpoint) and every landmark variant in `checkpoints` (variant -> URI),
    torch (and ONNX Runtime where it applies: fp32 on a CPU) at each batch size and LiteRT at batch 1, on `threads`
    threads each; where both ONNX Runtime and LiteRT run, the two again in alternating batches in one process."""
    from pipeline.models.blazepose import weights
    from pipeline.models.runtime import autocast_dtype, pick_device, pick_runtime

    dev = pick_device(device)
    dtype = None if precision == "auto" else autocast_dtype(precision, dev)  # as load_pose_model resolves it
    runtimes = ["torch"] + (["onnxruntime"] if pick_runtime("auto", dev, dtype, compile_model) == "onnxruntime"
                            else [])

    rows = []
    graphs = None
    if litert:
        try:
            import ai_edge_litert  # noqa: F401
            graphs = weights.read_graphs(weights.read_archive(), ["detector", *checkpoints])
        except (ImportError, weights.WeightsError) as exc:
            rows.append(Measurement("litert", "skipped", 0, 0.0, note=f"LiteRT rows skipped: {exc}"))
    nets = [("detector", next(iter(checkpoints.values())), "detector")] + \
        [(f"landmarks {v}", uri, "landmarks") for v, uri in checkpoints.items()]
    for name, uri, net in nets:
        for runtime in runtimes:
            for batch in batch_sizes:
                [result] = run_workers(torch_net_worker, [(uri, net, batch, device, precision, threads,
                                                           compile_model, runtime, min_seconds)])
                config = (f"B={batch}, {threads} thr, {result['device']} {result['dtype']}, {runtime}"
                          f"{', compiled' if compile_model else ''}")
                rows.append(net_row(f"raw {name}", config, result, batch))
        if graphs is not None:
            graph = graphs["detector" if net == "detector" else name.split()[-1]]
            [result] = run_workers(litert_worker, [(graph, net, threads, min_seconds)])
            rows.append(net_row(f"litert {name}", f"B=1, {threads} thr, cpu float32 (XNNPACK)", result, 1))
            if "onnxruntime" in runtimes:
                batch = max(batch_sizes)
                [times] = run_workers(runtime_pair_worker, [(uri, net, batch, graph, threads, min_seconds)])
                rows.append(pair_row(name, batch, threads, times))
    return rows

