"""Load a .tflite graph's weights into the torch module that re-implements it, checking every op on the way.

The module's own forward is the map: it runs once on a `GraphTensor`, a stand-in that names a tensor of the TFLite
graph. Each torch op it calls (conv2d, relu6, add, pad, max_pool2d, interpolate, depth_to_space, sigmoid, reshape,
cat) is intercepted through `__torch_function__` and matched to the one unused graph op of the same kind that
consumes that tensor, with the same kernel, stride, padding, channels and fused activation; a conv then copies the
graph's weights into the module's parameters. Where two graph ops fit equally (twin branches on one tensor), the
first in graph order is taken and the next op must confirm it. The conversion fails, naming the op, when anything
does not match; and at the end every graph op must have been used, every parameter filled, and the module's outputs
must be the graph's outputs. Nothing of this runs at inference: the module is plain torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.models.blazepose.layers import depth_to_space
from pipeline.models.blazepose.tflite_graph import Graph, Op


class ConversionError(ValueError):
    """The graph and the module disagree: an op, an option, a shape or a weight has no counterpart."""


@dataclass(frozen=True)
class GraphTensor:
    """A graph tensor seen as NCHW by the module: `pads` is spatial zero padding the module applied (F.pad) that
    the graph folds into the next conv; `activation` is a fused activation the graph applied and the module has
    yet to call; `nhwc` marks a tensor the module permuted to the graph's layout (before a reshape)."""

    tracer: "GraphTracer"
    id: int
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)  # left, right, top, bottom
    activation: str | None = None
    nhwc: bool = False

    @property
    def shape(self) -> tuple[int, ...]:
        shape = self.tracer.graph.shapes[self.id]
        return shape if self.nhwc or len(shape) != 4 else (shape[0], shape[3], shape[1], shape[2])

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        tracer = next(a for a in list(args) + [x for a in args if isinstance(a, (list, tuple)) for x in a]
                      if isinstance(a, GraphTensor)).tracer
        return tracer.call(func, args, kwargs)

    def __add__(self, other: "GraphTensor") -> "GraphTensor":
        return self.tracer.add(self, other)

    def permute(self, *dims):
        if tuple(dims) != (0, 2, 3, 1):
            raise ConversionError(f"only a permute to NHWC (0, 2, 3, 1) has a graph counterpart, got {dims}")
        self.tracer.settle(self)
        return GraphTensor(self.tracer, self.id, nhwc=True)

    def reshape(self, *shape):
        return self.tracer.reshape(self, shape)


class GraphTracer:
    def __init__(self, graph: Graph, module: nn.Module):
        self.graph = graph
        self.used: set[int] = set()
        self.parameters = {id(p): name for name, p in module.named_parameters()}
        self.state: dict[str, torch.Tensor] = {}

    def fail(self, message: str, x: GraphTensor | None = None) -> None:
        where = f" (at graph tensor {self.graph.names[x.id]!r})" if x is not None else ""
        raise ConversionError(message + where)

    def settle(self, x: GraphTensor) -> None:
        """A tensor about to be consumed must carry no activation or padding the module has not matched yet."""
        if x.activation:
            self.fail(f"the graph applies a fused {x.activation} here and the module does not", x)
        if any(x.pads):
            self.fail(f"the module pads {x.pads} here and the next graph op is not a conv", x)

    def find(self, kind: str, inputs: list[int], accept=lambda op: True) -> Op:
        """The first unused op of `kind` whose activation inputs are exactly `inputs` (in any order) and that
        `accept`s; raises ConversionError when there is none."""
        for op in self.graph.ops:
            if op.index in self.used or op.kind != kind:
                continue
            activations = [i for i in op.inputs if i >= 0 and i not in self.graph.constants]
            if sorted(activations) == sorted(inputs) and accept(op):
                self.used.add(op.index)
                return op
        names = ", ".join(repr(self.graph.names[i]) for i in inputs)
        raise ConversionError(f"no unused {kind} in the graph consumes {names} with the options the module uses")

    def result(self, op: Op) -> GraphTensor:
        return GraphTensor(self, op.outputs[0], activation=op.options.get("activation"))

    # --- the intercepted ops ----------------------------------------------------------------------------------------

    def call(self, func, args, kwargs):
        x = args[0]
        if func in (F.conv2d, torch.conv2d):
            return self.conv(x, *args[1:], **kwargs)
        if func in (F.relu6, F.hardtanh):
            limits = (kwargs.get("min_val", args[1] if len(args) > 1 else 0.0),
                      kwargs.get("max_val", args[2] if len(args) > 2 else 6.0)) if func is F.hardtanh else (0, 6)
            return self.activate(x, "relu6" if tuple(limits) == (0.0, 6.0) else f"hardtanh{limits}")
        if func in (F.relu, torch.relu):
            return self.activate(x, "relu")
        if func in (torch.add, torch.Tensor.add, torch.Tensor.__add__):
            return self.add(x, args[1])
        if func is F.pad:
            return self.pad(x, tuple(args[1]), kwargs.get("value"))
        if func is F.max_pool2d:
            return self.max_pool(x, *args[1:], **kwargs)
        if func is F.interpolate:
            return self.resize(x, **kwargs)
        if func is depth_to_space:
            self.settle(x)
            op = self.find("DEPTH_TO_SPACE", [x.id], lambda op: op.options["block"] == args[1])
            return self.result(op)
        if func in (torch.sigmoid, torch.Tensor.sigmoid):
            self.settle(x)
            return self.result(self.find("LOGISTIC", [x.id]))
        if func is torch.cat:
            return self.concat(list(x), kwargs.get("dim", args[1] if len(args) > 1 else 0))
        if func in (torch.Tensor.reshape, torch.reshape):
            return self.reshape(x, args[1:])
        raise ConversionError(f"the module calls {getattr(func, '__name__', func)}, which has no graph counterpart "
                              f"the converter knows")

    def conv(self, x: GraphTensor, weight, bias=None, stride=1, padding=0, dilation=1, groups=1) -> GraphTensor:
        if x.activation:
            self.settle(x)
        stride, padding = pair(stride), pair(padding)
        if pair(dilation) != (1, 1):
            self.fail("dilated convs are not converted", x)
        out_channels, _, kh, kw = weight.shape
        depthwise = groups > 1
        if depthwise and groups != x.shape[1]:
            self.fail(f"grouped conv with {groups} groups on {x.shape[1]} channels is neither dense nor depthwise", x)
        module_pads = (x.pads[0] + padding[1], x.pads[1] + padding[1], x.pads[2] + padding[0],
                       x.pads[3] + padding[0])
        kind = "DEPTHWISE_CONV_2D" if depthwise else "CONV_2D"

        def accept(op: Op) -> bool:
            w = self.graph.shapes[op.inputs[1]]
            shape_ok = w == ((1, kh, kw, out_channels) if depthwise else (out_channels, kh, kw, x.shape[1]))
            return shape_ok and op.options["stride"] == stride and self.graph_pads(op, x) == module_pads

        # the graph may pad in a PAD op first: then the conv consumes that op's output
        op = self.find_after_pad(x, kind, accept)
        w = self.graph.constants.get(op.inputs[1])
        if w is None:
            self.fail(f"{kind} #{op.index} has no constant weights", x)
        w = w.transpose(3, 0, 1, 2) if depthwise else w.transpose(0, 3, 1, 2)  # -> (O, I/groups, kh, kw)
        self.assign(weight, w)
        graph_bias = self.graph.constants.get(op.inputs[2]) if len(op.inputs) > 2 and op.inputs[2] >= 0 else None
        if (bias is None) != (graph_bias is None):
            self.fail(f"{kind} #{op.index}: bias in the graph {graph_bias is not None}, in the module "
                      f"{bias is not None}", x)
        if bias is not None:
            self.assign(bias, graph_bias)
        return self.result(op)

    def find_after_pad(self, x: GraphTensor, kind: str, accept) -> Op:
        try:
            return self.find(kind, [x.id], accept)
        except ConversionError:
            for pad in self.graph.consumers(x.id):  # one PAD may feed several convs
                if pad.kind == "PAD":
                    conv = next((op for op in self.graph.consumers(pad.outputs[0]) if op.kind == kind
                                 and op.index not in self.used and accept(op)), None)
                    if conv is not None:
                        self.used.update((pad.index, conv.index))
                        return conv
            raise

    def graph_pads(self, op: Op, x: GraphTensor) -> tuple[int, int, int, int]:
        """(left, right, top, bottom) zero padding the graph applies before `op`, counting a PAD op that feeds it
        and TF's SAME rule for the op's own padding."""
        source = op.inputs[0]
        pads = [0, 0, 0, 0]
        if source != x.id:                                                    # fed by a PAD of x
            pad_op = next(p for p in self.graph.ops if source in p.outputs)
            (_, _), (top, bottom), (left, right), (c0, c1) = self.graph.constants[pad_op.inputs[1]].reshape(4, 2)
            if c0 or c1:
                return (-1, -1, -1, -1)
            pads = [left, right, top, bottom]
        if op.options["padding"] == "SAME":
            _, h, w, _ = self.graph.shapes[source]
            _, kh, kw, _ = self.graph.shapes[op.inputs[1]]
            for i, (size, k, s) in enumerate(((w, kw, op.options["stride"][1]), (h, kh, op.options["stride"][0]))):
                total = max(k - (s if size % s == 0 else size % s), 0)
                pads[2 * i] += total // 2
                pads[2 * i + 1] += total - total // 2
        return tuple(int(p) for p in pads)

    def activate(self, x: GraphTensor, name: str) -> GraphTensor:
        if x.activation != name:
            self.fail(f"the module applies {name} where the graph has {x.activation or 'no activation'}", x)
        return GraphTensor(self, x.id)

    def add(self, a: GraphTensor, b: GraphTensor) -> GraphTensor:
        self.settle(a)
        self.settle(b)
        return self.result(self.find("ADD", [a.id, b.id]))

    def pad(self, x: GraphTensor, pads: tuple[int, ...], value) -> GraphTensor:
        if value not in (None, 0, 0.0):
            self.fail(f"only zero padding converts, got value {value}", x)
        pads = pads + (0,) * (6 - len(pads))
        if any(pads[4:]) and not any(pads[:4]):                              # channels: a PAD op in the graph
            self.settle(x)
            want = [[0, 0], [0, 0], [0, 0], list(pads[4:])]
            op = self.find("PAD", [x.id], lambda op: self.graph.constants[op.inputs[1]].tolist() == want)
            return self.result(op)
        if any(pads[4:]):
            self.fail("padding channels and space at once does not convert", x)
        if x.activation:
            self.settle(x)
        return GraphTensor(self, x.id, pads=tuple(p + q for p, q in zip(x.pads, pads[:4])))

    def max_pool(self, x: GraphTensor, kernel, stride=None, padding=0, dilation=1, ceil_mode=False,
                 return_indices=False) -> GraphTensor:
        self.settle(x)
        kernel, stride = pair(kernel), pair(stride or kernel)
        if pair(padding) != (0, 0) or ceil_mode or return_indices:
            self.fail("only an unpadded max pool converts", x)
        op = self.find("MAX_POOL_2D", [x.id], lambda op: op.options["kernel"] == kernel
                       and op.options["stride"] == stride and op.options["padding"] == "VALID")
        return self.result(op)

    def resize(self, x: GraphTensor, size=None, scale_factor=None, mode="nearest", align_corners=None,
               **_) -> GraphTensor:
        self.settle(x)
        if mode != "bilinear" or align_corners:
            self.fail(f"only bilinear resizing with align_corners=False converts, got {mode}", x)
        _, _, h, w = x.shape
        size = pair(size) if size is not None else (math.floor(h * scale_factor), math.floor(w * scale_factor))

        def accept(op: Op) -> bool:  # torch's align_corners=False is TF's half_pixel_centers
            return (self.graph.constants[op.inputs[1]].tolist() == list(size) and op.options["half_pixel_centers"]
                    and not op.options["align_corners"])

        return self.result(self.find("RESIZE_BILINEAR", [x.id], accept))

    def concat(self, parts: list[GraphTensor], dim: int) -> GraphTensor:
        for part in parts:
            self.settle(part)
        ids = [p.id for p in parts]
        rank = len(self.graph.shapes[ids[0]])
        op = self.find("CONCATENATION", ids, lambda op: [i for i in op.inputs] == ids
                       and op.options["axis"] % rank == dim % rank)
        return self.result(op)

    def reshape(self, x: GraphTensor, shape) -> GraphTensor:
        self.settle(x)
        shape = tuple(shape[0]) if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else tuple(shape)
        source = self.graph.shapes[x.id]
        if len(source) == 4 and not x.nhwc and source[1:3] != (1, 1):
            self.fail("reshaping an NCHW map with a spatial extent differs from the graph's NHWC reshape; "
                      "permute to NHWC first", x)
        op = self.find("RESHAPE", [x.id])
        target = self.graph.shapes[op.outputs[0]]
        if int(np.prod(target[1:])) != int(np.prod([d for d in shape[1:] if d != -1])) and -1 not in shape[1:]:
            self.fail(f"the module reshapes to {shape}, the graph to {target}", x)
        return GraphTensor(self, op.outputs[0], nhwc=True)

    def assign(self, parameter: torch.Tensor, value: np.ndarray) -> None:
        name = self.parameters.get(id(parameter))
        if name is None:
            raise ConversionError("a conv uses a tensor that is not a parameter of the module")
        if name in self.state:
            raise ConversionError(f"parameter {name} is matched to two graph ops")
        if tuple(parameter.shape) != value.shape:
            raise ConversionError(f"parameter {name}: module shape {tuple(parameter.shape)}, graph {value.shape}")
        self.state[name] = torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32))


def pair(value) -> tuple[int, int]:
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


def load_graph_weights(module: nn.Module, graph: Graph, forward=None) -> nn.Module:
    """Fill `module`'s parameters from `graph` by tracing `forward(module, x)` (default: `module(x)`) over it.

    The forward's outputs (a tensor, or a tuple or dict of them, in the graph's output order) must be the graph's
    outputs. Returns the module, in eval mode.

    Raises:
        ConversionError: naming what does not match.
    """
    if len(graph.inputs) != 1:
        raise ConversionError(f"expected a graph with one input, got {len(graph.inputs)}")
    tracer = GraphTracer(graph, module)
    with torch.no_grad():
        outputs = (forward or (lambda m, x: m(x)))(module, GraphTensor(tracer, graph.inputs[0]))
    if isinstance(outputs, dict):
        outputs = list(outputs.values())
    outputs = list(outputs) if isinstance(outputs, (tuple, list)) else [outputs]
    for out in outputs:
        tracer.settle(out)
    got = sorted(o.id for o in outputs)
    if got != sorted(graph.outputs):
        raise ConversionError(f"the module's outputs {[graph.names[i] for i in got]} are not the graph's "
                              f"{[graph.names[i] for i in graph.outputs]}")
    unused = [f"{op.kind} #{op.index}" for op in graph.ops if op.index not in tracer.used]
    if unused:
        raise ConversionError(f"the module leaves {len(unused)} graph ops unused: {', '.join(unused[:8])}")
    missing = [name for name, _ in module.named_parameters() if name not in tracer.state]
    if missing:
        raise ConversionError(f"no graph weights for {len(missing)} parameters: {', '.join(missing[:8])}")
    module.load_state_dict(tracer.state)
    return module.eval()
