"""Running a network on a device: picking the device and the autocast precision, folding BatchNorm, and the
allocator setting that keeps CPU inference fast. Shared by inference and training."""

from __future__ import annotations

import contextlib
import copy
import ctypes
import ctypes.util
import functools
import logging

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from pipeline.models.bottomup import forward_flip_averaged

logger = logging.getLogger(__name__)

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3       # glibc's mallopt parameters (<malloc.h>)


AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


CPU_AUTOCAST_DTYPES = {"bf16": torch.bfloat16}  # oneDNN runs bf16 convs on AVX512-BF16 / AMX; fp16 has no fast path


def fold_batchnorm(model: nn.Module, size: int = 64) -> nn.Module:
    """Fold each eval-mode BatchNorm2d into the Conv2d that feeds it: one pass over the activations instead of two.

    Pairs are a Conv2d followed by a BatchNorm2d in a Sequential, and `convN` / `bnN` children of one module
    (PoseNet's BasicBlock). The folded copy is checked against the original on a random (1, 3, size, size) input
    and the original is kept if they differ, so a module that applies bnN to something else stays correct.
    Measured (benchmark, 2-core CPU, B=8, fp32): 9% less CPU per frame; outputs equal to 2e-6 relative.
    """
    folded = copy.deepcopy(model).eval()
    for module in folded.modules():
        if isinstance(module, nn.Sequential):
            for i in range(len(module) - 1):
                if isinstance(module[i], nn.Conv2d) and isinstance(module[i + 1], nn.BatchNorm2d):
                    module[i], module[i + 1] = fuse_conv_bn_eval(module[i], module[i + 1]), nn.Identity()
        for name, child in list(module.named_children()):
            conv = getattr(module, "conv" + name[2:], None) if name.startswith("bn") else None
            if isinstance(child, nn.BatchNorm2d) and isinstance(conv, nn.Conv2d):
                setattr(module, "conv" + name[2:], fuse_conv_bn_eval(conv, child))
                setattr(module, name, nn.Identity())
    parameter = next(model.parameters())
    x = torch.randn(1, 3, size, size, device=parameter.device, dtype=parameter.dtype)
    with torch.inference_mode():
        expected, got = model.eval()(x), folded(x)
    if not all(torch.allclose(e, g, rtol=1e-3, atol=1e-4) for e, g in zip(expected, got)):
        logger.warning("folding BatchNorm into convs changed the model's outputs; running it unfolded")
        return model
    return folded


def prepare_model(model: nn.Module) -> nn.Module:
    """The network as inference runs it: eval mode, BatchNorm folded into the convs, weights channels_last
    (channels_last measured 2.1x faster on a 2-core CPU at batch 16; on GPUs it feeds the tensor cores)."""
    return fold_batchnorm(model.eval()).to(memory_format=torch.channels_last)


def run_network(model: nn.Module, x: torch.Tensor, dtype: torch.dtype | None,
                flip_test: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Both heads of `model` for normalised images, as every inference path computes them (the actor, the
    evaluation job, the benchmark): channels_last, under autocast to `dtype` (None: fp32), optionally flip-averaged.

    Args:
        x: (B, 3, S, S) float images on the model's device.
    Returns:
        heatmaps (B, K, S/4, S/4) and PAFs (B, 2L, S/4, S/4), float32.
    """
    x = x.contiguous(memory_format=torch.channels_last)
    autocast = torch.autocast(x.device.type, dtype=dtype) if dtype else contextlib.nullcontext()
    with torch.inference_mode(), autocast:
        heatmaps, pafs = forward_flip_averaged(model, x) if flip_test else model(x)
    return heatmaps.float(), pafs.float()


@functools.cache
def keep_freed_memory(largest_block: int = 32 * 2**20) -> bool:
    """Make glibc keep freed memory in the process for reuse instead of handing it back to the OS.

    A CPU forward allocates and frees activations of several MB per layer. By default glibc unmaps or trims such
    blocks when they are freed, so every batch faults its activations in again, a tenth or more of a forward's time.
    With blocks up to `largest_block` served from the heap and the heap never trimmed, the process holds its peak
    working set (about one batch's activations) from its first batches on (docs/performance.md has the page-fault
    counts and the speed-up). Process-wide and not undone.
    Returns False where the C library has no mallopt (musl, macOS): nothing changes there.
    """
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt(M_MMAP_THRESHOLD, largest_block) == 1 and mallopt(M_TRIM_THRESHOLD, 2**31 - 1) == 1


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (AMX or AVX512-BF16 flags in /proc/cpuinfo; False elsewhere).

    Without them oneDNN emulates bf16: a training step of the default net ran 13x slower than fp32 on a 2-core
    AVX2 EPYC, where an AMX Xeon ran it 1.5x faster.
    """
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The dtype to autocast the network to on `device`, or None for plain fp32.

    `auto` takes bf16 where the hardware runs it natively (a CUDA GPU with bf16, a CPU with AMX/AVX512-BF16) and fp32
    elsewhere. An explicit `bf16` on a CPU without native bf16 is honoured, with a warning: it is much slower; `fp16`
    on a CPU runs fp32, with a warning.
    """
    if precision not in ("auto", "fp32", "bf16", "fp16"):
        raise ValueError(f"expected precision auto, fp32, bf16 or fp16, got {precision!r}")
    if device.type == "cuda":
        if precision == "auto":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
        return AUTOCAST_DTYPES.get(precision)
    native = cpu_has_native_bf16()
    if precision == "auto":
        return torch.bfloat16 if native else None
    if precision == "bf16" and not native:
        logger.warning("precision bf16 on a CPU without AMX/AVX512-BF16 is emulated and runs several times slower "
                       "than fp32; use precision auto or fp32")
    if precision == "fp16":
        logger.warning("precision fp16 runs as fp32 on a CPU (no fast fp16 convolutions there); fp16 is for GPUs")
    return CPU_AUTOCAST_DTYPES.get(precision)


RUNTIMES = ("auto", "torch", "onnxruntime")


def pick_runtime(runtime: str, device: torch.device, dtype: torch.dtype | None, compile_model: bool = False) -> str:
    """What runs the nets of a top-down model: `torch` or `onnxruntime`.

    `auto` takes ONNX Runtime for fp32 on a CPU (faster than torch eager there, docs/performance.md) and torch
    everywhere else: on GPUs, under bf16/fp16 autocast, and when the nets are to be compiled.

    Raises:
        ValueError: an unknown runtime, or onnxruntime asked for where it does not apply.
    """
    if runtime not in RUNTIMES:
        raise ValueError(f"expected model.runtime auto, torch or onnxruntime, got {runtime!r}")
    onnx_applies = device.type == "cpu" and dtype is None and not compile_model
    if runtime == "onnxruntime" and not onnx_applies:
        raise ValueError("model.runtime=onnxruntime runs fp32 nets on a CPU without model.compile; use "
                         "model.runtime=torch for a GPU, bf16/fp16 or compiled nets")
    if runtime == "auto":
        return "onnxruntime" if onnx_applies else "torch"
    return runtime


def pick_device(device: str) -> torch.device:
    """`auto` -> cuda when this process sees a GPU, else cpu; an explicit `cuda` without one is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("model.device=cuda but no GPU is visible to this worker; use model.device=auto or cpu")
    return torch.device(device)


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on `device`; on a GPU copied from pinned memory without waiting for the device (a plain copy
    from pageable memory synchronises the stream)."""
    if device.type != "cuda" or tensor.device.type != "cpu":
        return tensor
    return tensor.pin_memory().to(device, non_blocking=True)


def inference_device(device: str) -> torch.device:
    """The device a process runs its pose model on (`pick_device`), with a CPU's allocator set for inference and a
    GPU's TF32 off."""
    picked = pick_device(device)
    if picked.type == "cpu":
        keep_freed_memory()
    else:  # fp32 means fp32: cuDNN would run fp32 convs as TF32 (10-bit mantissa) by default, flipping presence
        torch.backends.cudnn.allow_tf32 = False        # decisions near their threshold; bf16/fp16 are asked for
        torch.backends.cuda.matmul.allow_tf32 = False  # explicitly with model.precision
    return picked


class PaddedBatch:
    """A net called on batches padded with zeros to a multiple of `multiple`, its outputs cut back to the inputs.

    Compiled with `dynamic=True` and fed such batches, a net is one graph for every batch size: torch.compile
    specialises batches of 1, and the CPU convolutions guard on batches up to 15, so unpadded crop batches of
    varying size built 2-4 graphs per net.
    """

    def __init__(self, net, multiple: int = 16):
        self.net, self.multiple = net, multiple

    def __call__(self, x: torch.Tensor):
        n = len(x)
        pad = -n % self.multiple
        out = self.net(torch.cat([x, x.new_zeros((pad, *x.shape[1:]))]) if pad else x)
        if isinstance(out, dict):
            return {key: value[:n] for key, value in out.items()}
        return type(out)(value[:n] for value in out) if isinstance(out, (tuple, list)) else out[:n]


def compile_padded(net: nn.Module) -> PaddedBatch:
    """`net` compiled once for every batch size (`PaddedBatch`)."""
    return PaddedBatch(torch.compile(net, dynamic=True))
