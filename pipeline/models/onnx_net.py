"""A torch module's forward under ONNX Runtime: the CPU runtime of the inference actors.

torch stays the one definition of every net and the GPU path. On a CPU, ONNX Runtime runs the same graph, exported
from the module with a dynamic batch: faster than torch eager, and on par with or faster than LiteRT running the
imported graphs (docs/performance.md, session 11).

Exporting takes seconds, so each export is cached on the node's disk (`onnx/` in the model cache), keyed by the
module's weights, the source files of its classes and the torch version that exported it.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import warnings
from pathlib import Path

import numpy as np
import torch

from pipeline.storage import resolve, write_bytes_atomic

logger = logging.getLogger(__name__)


def export_key(module: torch.nn.Module, shape: tuple[int, ...]) -> str:
    """A name for the export of `module` on inputs (B, *shape): its weights, its code and the torch version.

    The code is the source files that define the classes of `module` and its children, so an export made before a
    forward changed is never reused.
    """
    digest = hashlib.sha256(f"{type(module).__qualname__}|{torch.__version__}|{shape}".encode())
    for path in sorted({source_file(type(m)) for m in module.modules()} - {None}):
        digest.update(Path(path).read_bytes())
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:32]


def source_file(cls: type) -> str | None:
    try:
        return inspect.getsourcefile(cls)
    except TypeError:  # a class without a file (defined at run time)
        return None


class Flat(torch.nn.Module):
    """`module` with its outputs as a flat tuple (ONNX graphs have a list of outputs, no dicts)."""

    def __init__(self, module: torch.nn.Module, keys: tuple[str, ...] | None):
        super().__init__()
        self.module, self.keys = module, keys

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.module(x)
        return tuple(out[k] for k in self.keys) if self.keys else tuple(out)


def export_onnx(module: torch.nn.Module, shape: tuple[int, ...], keys: tuple[str, ...] | None) -> bytes:
    """The ONNX graph of `module` on inputs (B, *shape), B dynamic (torch's dynamo exporter)."""
    example = torch.zeros(2, *shape)  # a batch of 1 would be specialised to 1
    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # it warns for each torchvision op it cannot register
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(Flat(module, keys).eval(), (example,), dynamo=True, verbose=False,
                                        dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},))
    finally:
        quiet.setLevel(level)
    return program.model_proto.SerializeToString()


class OnnxNet:
    """Calls like the module it was made from (a float32 NCHW tensor in, the same tuple or dict of tensors out),
    on ONNX Runtime's CPU kernels with `threads` threads.

    Args:
        module: the net, float32, on the CPU, eval mode.
        shape: the shape of one input, (C, H, W).
        cache: folder for exported graphs; None: export every time.
        max_batch: inputs per run; larger batches run in pieces. A CPU gains nothing per input from large batches,
            while their activations set the process's peak memory (a 32-frame batch hands the detector 112 views).
    """

    def __init__(self, module: torch.nn.Module, shape: tuple[int, ...], threads: int, cache: Path | None = None,
                 max_batch: int = 16):
        import onnxruntime

        module = module.float().eval()
        with torch.inference_mode():
            out = module(torch.zeros(1, *shape))
        self.keys = tuple(out) if isinstance(out, dict) else None
        graph = self.cached_graph(module, tuple(shape), cache)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        # threads sleep between runs instead of spinning: the actor shares its cores with decode and Ray
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = onnxruntime.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
        self.input, self.max_batch = self.session.get_inputs()[0].name, max_batch

    def cached_graph(self, module: torch.nn.Module, shape: tuple[int, ...], cache: Path | None) -> bytes:
        path = cache / f"{export_key(module, shape)}.onnx" if cache else None
        if path is not None and path.is_file():
            return path.read_bytes()
        logger.info("exporting %s to ONNX%s", type(module).__name__, f" ({path})" if path else "")
        graph = export_onnx(module, shape, self.keys)
        if path is not None:
            try:
                write_bytes_atomic(*resolve(str(path)), graph)
            except OSError as exc:  # a read-only cache costs an export per start, nothing else
                logger.warning("could not cache the ONNX graph at %s: %s", path, exc)
        return graph

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, ...] | dict[str, torch.Tensor]:
        array = x.detach().float().numpy()
        parts = [self.session.run(None, {self.input: np.ascontiguousarray(array[i:i + self.max_batch])})
                 for i in range(0, max(len(array), 1), self.max_batch)]
        out = [torch.from_numpy(np.concatenate(o) if len(parts) > 1 else o[0]) for o in zip(*parts)]
        return dict(zip(self.keys, out)) if self.keys else tuple(out)
