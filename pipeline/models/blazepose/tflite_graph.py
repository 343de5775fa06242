"""Read a .tflite flatbuffer into plain Python: operators with their options and constant tensors as numpy arrays.

Only what the BlazePose graphs hold is understood; anything else raises `UnsupportedGraph` naming the op or option,
so a different graph fails loudly instead of converting into something subtly wrong. Constant weights are returned
as float32: fp16 buffers behind DEQUANTIZE are widened, sparse ones behind DENSIFY expanded first (TFLite's sparsity
format: a traversal order over dense and CSR dimensions).

Tensors are in TFLite's layout (NHWC activations; conv weights (O, H, W, I), depthwise weights (1, H, W, C)).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import tflite

OP_NAMES = {code: name for name, code in vars(tflite.BuiltinOperator).items() if not name.startswith("_")}
DTYPES = {tflite.TensorType.FLOAT32: np.float32, tflite.TensorType.FLOAT16: np.float16,
          tflite.TensorType.INT32: np.int32, tflite.TensorType.INT64: np.int64, tflite.TensorType.UINT8: np.uint8,
          tflite.TensorType.INT8: np.int8}
ACTIVATIONS = {tflite.ActivationFunctionType.NONE: None, tflite.ActivationFunctionType.RELU: "relu",
               tflite.ActivationFunctionType.RELU6: "relu6"}
PADDINGS = {tflite.Padding.SAME: "SAME", tflite.Padding.VALID: "VALID"}
WEIGHT_OPS = ("DEQUANTIZE", "DENSIFY")  # folded into constants at read time


class UnsupportedGraph(ValueError):
    """A .tflite graph with an op, option or tensor format this reader does not convert."""


@dataclass
class Op:
    """One operator: `inputs`/`outputs` are tensor ids (constants among the inputs are in `Graph.constants`)."""

    index: int
    kind: str                                   # TFLite builtin name, e.g. CONV_2D
    inputs: list[int]
    outputs: list[int]
    options: dict = field(default_factory=dict)


@dataclass
class Graph:
    ops: list[Op]                               # compute ops in graph order (DEQUANTIZE / DENSIFY folded away)
    constants: dict[int, np.ndarray]            # tensor id -> float32 / int array
    shapes: dict[int, tuple[int, ...]]          # tensor id -> shape (NHWC)
    names: dict[int, str]
    inputs: list[int]
    outputs: list[int]

    def consumers(self, tensor: int) -> list[Op]:
        return [op for op in self.ops if tensor in op.inputs]


def read_graph(data: bytes) -> Graph:
    """Parse a .tflite file's bytes. Raises UnsupportedGraph for anything but one float subgraph of known ops."""
    if len(data) < 8 or data[4:8] != b"TFL3":
        raise UnsupportedGraph(f"not a TFLite flatbuffer (expected the identifier 'TFL3' at byte 4, got "
                               f"{data[4:8]!r})")
    model = tflite.Model.GetRootAsModel(data, 0)
    if model.SubgraphsLength() != 1:
        raise UnsupportedGraph(f"expected one subgraph, got {model.SubgraphsLength()}")
    sub = model.Subgraphs(0)
    shapes, names = {}, {}
    for i in range(sub.TensorsLength()):
        tensor = sub.Tensors(i)
        shapes[i] = tuple(int(d) for d in tensor.ShapeAsNumpy()) if tensor.ShapeLength() else ()
        names[i] = tensor.Name().decode()
    constants = {i: array for i in range(sub.TensorsLength())
                 if (array := buffer_array(model, sub.Tensors(i), shapes[i])) is not None}
    ops = []
    for j in range(sub.OperatorsLength()):
        raw = sub.Operators(j)
        code = model.OperatorCodes(raw.OpcodeIndex())
        kind = OP_NAMES.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()), "CUSTOM")
        inputs, outputs = [int(i) for i in raw.InputsAsNumpy()], [int(i) for i in raw.OutputsAsNumpy()]
        if kind == "DEQUANTIZE":
            constants[outputs[0]] = constants[inputs[0]].astype(np.float32)
        elif kind == "DENSIFY":
            constants[outputs[0]] = densify(sub.Tensors(inputs[0]), constants[inputs[0]], shapes[outputs[0]])
        else:
            ops.append(Op(len(ops), kind, inputs, outputs, read_options(kind, raw)))
    return Graph(ops, constants, shapes, names, [int(i) for i in sub.InputsAsNumpy()],
                 [int(i) for i in sub.OutputsAsNumpy()])


def buffer_array(model, tensor, shape: tuple[int, ...]) -> np.ndarray | None:
    """The constant data of a tensor (as stored: fp16 stays fp16, sparse stays flat), or None for activations."""
    buffer = model.Buffers(tensor.Buffer())
    if buffer is None or buffer.DataLength() == 0:
        return None
    if tensor.Type() not in DTYPES:
        raise UnsupportedGraph(f"tensor {tensor.Name().decode()!r} has TFLite type {tensor.Type()}, which this "
                               f"reader does not convert")
    if tensor.Quantization() is not None and tensor.Quantization().ScaleLength():
        raise UnsupportedGraph(f"tensor {tensor.Name().decode()!r} is integer-quantized; only float graphs convert")
    flat = buffer.DataAsNumpy().view(DTYPES[tensor.Type()])
    return flat if tensor.Sparsity() is not None else flat.reshape(shape)


def densify(tensor, values: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Expand a sparse constant (TFLite `SparsityParameters`: dense and CSR dimensions in traversal order) to float32.

    Each dimension level maps a parent position to child positions: a dense level of size n has children
    parent * n + i, a CSR level has children segments[parent] .. segments[parent + 1] with coordinates from its
    indices. The positions of the last level index `values` in order.
    """
    sparsity = tensor.Sparsity()
    order = [int(d) for d in sparsity.TraversalOrderAsNumpy()]
    if order != list(range(len(shape))) or sparsity.BlockMapLength():
        raise UnsupportedGraph(f"sparse tensor {tensor.Name().decode()!r}: block sparsity or a permuted traversal "
                               f"order (got {order}) is not supported")
    coords = np.zeros((1, 0), np.int64)    # (positions, dims so far): coordinates of each position at this level
    for level in range(sparsity.DimMetadataLength()):
        meta = sparsity.DimMetadata(level)
        if meta.Format() == tflite.DimensionType.DENSE:
            n = meta.DenseSize()
            child = np.arange(n)
            coords = np.concatenate([np.repeat(coords, n, axis=0), np.tile(child, len(coords))[:, None]], axis=1)
        else:
            segments, indices = sparse_vector(meta.ArraySegments(), meta.ArraySegmentsType()), \
                sparse_vector(meta.ArrayIndices(), meta.ArrayIndicesType())
            counts = np.diff(segments)
            coords = np.concatenate([np.repeat(coords, counts, axis=0), indices[:, None]], axis=1)
    if len(coords) != values.size:
        raise UnsupportedGraph(f"sparse tensor {tensor.Name().decode()!r}: {values.size} values for {len(coords)} "
                               f"positions")
    dense = np.zeros(shape, np.float32)
    dense[tuple(coords.T)] = values.astype(np.float32)
    return dense


def sparse_vector(table, kind: int) -> np.ndarray:
    """The int array inside a SparseIndexVector union (Int32Vector, Uint16Vector or Uint8Vector)."""
    vector = {tflite.SparseIndexVector.Int32Vector: tflite.Int32Vector,
              tflite.SparseIndexVector.Uint16Vector: tflite.Uint16Vector,
              tflite.SparseIndexVector.Uint8Vector: tflite.Uint8Vector}[kind]()
    vector.Init(table.Bytes, table.Pos)
    return vector.ValuesAsNumpy().astype(np.int64)


def read_options(kind: str, raw) -> dict:
    """The options of the ops the BlazePose graphs use, as plain values; other ops raise UnsupportedGraph."""
    table = raw.BuiltinOptions()

    def parse(cls):
        options = cls()
        options.Init(table.Bytes, table.Pos)
        return options

    if kind in ("CONV_2D", "DEPTHWISE_CONV_2D"):
        o = parse(tflite.Conv2DOptions if kind == "CONV_2D" else tflite.DepthwiseConv2DOptions)
        if (o.DilationHFactor(), o.DilationWFactor()) != (1, 1):
            raise UnsupportedGraph(f"{kind}: dilation is not supported")
        if kind == "DEPTHWISE_CONV_2D" and o.DepthMultiplier() not in (0, 1):
            raise UnsupportedGraph(f"DEPTHWISE_CONV_2D: depth multiplier {o.DepthMultiplier()} is not supported")
        return {"stride": (o.StrideH(), o.StrideW()), "padding": PADDINGS[o.Padding()],
                "activation": activation(kind, o.FusedActivationFunction())}
    if kind == "ADD":
        return {"activation": activation(kind, parse(tflite.AddOptions).FusedActivationFunction())}
    if kind == "MAX_POOL_2D":
        o = parse(tflite.Pool2DOptions)
        return {"kernel": (o.FilterHeight(), o.FilterWidth()), "stride": (o.StrideH(), o.StrideW()),
                "padding": PADDINGS[o.Padding()], "activation": activation(kind, o.FusedActivationFunction())}
    if kind == "RESIZE_BILINEAR":
        o = parse(tflite.ResizeBilinearOptions)
        return {"align_corners": bool(o.AlignCorners()), "half_pixel_centers": bool(o.HalfPixelCenters())}
    if kind == "DEPTH_TO_SPACE":
        return {"block": parse(tflite.DepthToSpaceOptions).BlockSize()}
    if kind == "CONCATENATION":
        o = parse(tflite.ConcatenationOptions)
        return {"axis": o.Axis(), "activation": activation(kind, o.FusedActivationFunction())}
    if kind in ("PAD", "RESHAPE", "LOGISTIC"):
        return {}
    raise UnsupportedGraph(f"op {kind} is not supported by the BlazePose converter")


def activation(kind: str, code: int) -> str | None:
    if code not in ACTIVATIONS:
        raise UnsupportedGraph(f"{kind}: fused activation {code} is not supported")
    return ACTIVATIONS[code]
