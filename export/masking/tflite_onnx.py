"""TFLite -> ONNX for the MediaPipe detector graphs, checked against the TFLite interpreter.

Written by hand because no maintained converter handles these graphs here: ``tflite2onnx`` fails on
the face-landmark and palm graphs (its layout propagation breaks on PReLU's 3-D slopes) and on selfie
segmentation (no HARD_SWISH, no MediaPipe custom op), and ``tf2onnx`` needs all of TensorFlow. The
MediaPipe graphs use a small set of float ops, listed in ``_CONVERTERS``; anything else is refused by
name. The ONNX graph keeps TFLite's NHWC tensors at its boundary and wraps each spatial op (conv,
pool, resize) in transposes to NCHW, which onnxruntime's transpose optimizer folds away.

The flatbuffer is read with the ``tflite`` package (the schema's generated Python); the reference
comparison runs Google's LiteRT interpreter (``ai-edge-litert``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import tflite
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
_NUMPY_TYPES = {
    tflite.TensorType.FLOAT32: np.float32,
    tflite.TensorType.FLOAT16: np.float16,
    tflite.TensorType.INT32: np.int32,
    tflite.TensorType.INT64: np.int64,
    tflite.TensorType.UINT8: np.uint8,
}
_OPERATOR_NAMES = {value: name for name, value in vars(tflite.BuiltinOperator).items() if name.isupper()}


class UnsupportedGraphError(ValueError):
    """The TFLite graph uses something this converter does not translate."""


@dataclass
class _Graph:
    model: tflite.Model
    subgraph: tflite.SubGraph
    nodes: list[onnx.NodeProto] = field(default_factory=list)
    initializers: dict[str, np.ndarray] = field(default_factory=dict)
    counter: int = 0

    def tensor(self, index: int) -> tflite.Tensor:
        return self.subgraph.Tensors(index)

    def name(self, index: int) -> str:
        return self.tensor(index).Name().decode()

    def shape(self, index: int) -> list[int]:
        return [int(d) for d in self.tensor(index).ShapeAsNumpy()]

    def constant(self, index: int) -> np.ndarray | None:
        """The tensor's value when it is a constant (its buffer holds data, or it was folded)."""
        name = self.name(index)
        if name in self.initializers:
            return self.initializers[name]
        tensor = self.tensor(index)
        data = self.model.Buffers(tensor.Buffer()).DataAsNumpy()
        if isinstance(data, int) or data.size == 0:
            return None
        dtype = _NUMPY_TYPES.get(tensor.Type())
        if dtype is None:
            raise UnsupportedGraphError(f"tensor {name}: type {tensor.Type()} is not supported")
        return np.frombuffer(data.tobytes(), dtype=dtype).reshape(self.shape(index))

    def fresh(self, stem: str) -> str:
        self.counter += 1
        return f"{stem}__{self.counter}"

    def add_constant(self, stem: str, value: np.ndarray) -> str:
        name = self.fresh(stem)
        self.initializers[name] = value
        return name

    def node(self, op_type: str, inputs: list[str], outputs: list[str] | None = None, **attrs) -> str:
        outputs = outputs or [self.fresh(op_type)]
        self.nodes.append(helper.make_node(op_type, inputs, outputs, name=self.fresh(op_type), **attrs))
        return outputs[0]

    def value(self, index: int) -> str:
        """The ONNX name of an input tensor, registering constants as initializers on first use."""
        name = self.name(index)
        if name not in self.initializers:
            constant = self.constant(index)
            if constant is not None:
                self.initializers[name] = (
                    constant.astype(np.float32) if constant.dtype == np.float16 else constant
                )
        return name


def _options(op: tflite.Operator, cls: type) -> object:
    options = cls()
    table = op.BuiltinOptions()
    options.Init(table.Bytes, table.Pos)
    return options


def _activation(graph: _Graph, value: str, fused: int, output: str) -> None:
    if fused == tflite.ActivationFunctionType.NONE:
        graph.node("Identity", [value], [output])
    elif fused == tflite.ActivationFunctionType.RELU:
        graph.node("Relu", [value], [output])
    elif fused == tflite.ActivationFunctionType.RELU6:
        graph.node(
            "Clip",
            [value, graph.add_constant("zero", np.float32(0)), graph.add_constant("six", np.float32(6))],
            [output],
        )
    else:
        raise UnsupportedGraphError(f"fused activation {fused} is not supported")


def _same_pads(in_size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    out = math.ceil(in_size / stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - in_size, 0)
    return total // 2, total - total // 2


def _spatial_pads(
    graph: _Graph, op: tflite.Operator, padding: int, kernel: tuple[int, int], strides, dilations=(1, 1)
):
    if padding == tflite.Padding.VALID:
        return [0, 0, 0, 0]
    _, height, width, _ = graph.shape(op.Inputs(0))
    top, bottom = _same_pads(height, kernel[0], strides[0], dilations[0])
    left, right = _same_pads(width, kernel[1], strides[1], dilations[1])
    return [top, left, bottom, right]


def _to_nchw(graph: _Graph, value: str) -> str:
    return graph.node("Transpose", [value], perm=[0, 3, 1, 2])


def _to_nhwc(graph: _Graph, value: str) -> str:
    return graph.node("Transpose", [value], perm=[0, 2, 3, 1])


def _conv(graph: _Graph, op: tflite.Operator, depthwise: bool) -> None:
    cls = tflite.DepthwiseConv2DOptions if depthwise else tflite.Conv2DOptions
    options = _options(op, cls)
    weights = graph.constant(op.Inputs(1))
    if weights is None:
        raise UnsupportedGraphError(f"{graph.name(op.Outputs(0))}: convolution weights must be constant")
    weights = weights.astype(np.float32)
    channels = graph.shape(op.Inputs(0))[3]
    if depthwise:  # [1, kh, kw, C * M] -> [C * M, 1, kh, kw], one group per input channel
        weights, group = weights.transpose(3, 0, 1, 2), channels
    else:  # [O, kh, kw, I] -> [O, I, kh, kw]
        weights, group = weights.transpose(0, 3, 1, 2), 1
    strides = (options.StrideH(), options.StrideW())
    dilations = (options.DilationHFactor(), options.DilationWFactor())
    kernel = weights.shape[2:]
    inputs = [_to_nchw(graph, graph.value(op.Inputs(0))), graph.add_constant("weight", weights)]
    if op.InputsLength() > 2 and op.Inputs(2) >= 0:
        inputs.append(graph.add_constant("bias", graph.constant(op.Inputs(2)).astype(np.float32)))
    conv = graph.node(
        "Conv",
        inputs,
        kernel_shape=list(kernel),
        strides=list(strides),
        dilations=list(dilations),
        group=group,
        pads=_spatial_pads(graph, op, options.Padding(), kernel, strides, dilations),
    )
    _activation(graph, _to_nhwc(graph, conv), options.FusedActivationFunction(), graph.name(op.Outputs(0)))


def _pool(graph: _Graph, op: tflite.Operator, kind: str) -> None:
    options = _options(op, tflite.Pool2DOptions)
    kernel = (options.FilterHeight(), options.FilterWidth())
    strides = (options.StrideH(), options.StrideW())
    attrs = {
        "kernel_shape": list(kernel),
        "strides": list(strides),
        "pads": _spatial_pads(graph, op, options.Padding(), kernel, strides),
    }
    if kind == "AveragePool":
        attrs["count_include_pad"] = 0  # TFLite averages over the valid pixels only
    pooled = graph.node(kind, [_to_nchw(graph, graph.value(op.Inputs(0)))], **attrs)
    _activation(graph, _to_nhwc(graph, pooled), options.FusedActivationFunction(), graph.name(op.Outputs(0)))


def _binary(graph: _Graph, op: tflite.Operator, kind: str) -> None:
    cls = tflite.AddOptions if kind == "Add" else tflite.MulOptions
    fused = _options(op, cls).FusedActivationFunction() if op.BuiltinOptions() else 0
    value = graph.node(kind, [graph.value(op.Inputs(0)), graph.value(op.Inputs(1))])
    _activation(graph, value, fused, graph.name(op.Outputs(0)))


def _unary(kind: str) -> Callable[[_Graph, tflite.Operator], None]:
    def convert(graph: _Graph, op: tflite.Operator) -> None:
        graph.node(kind, [graph.value(op.Inputs(0))], [graph.name(op.Outputs(0))])

    return convert


def _dequantize(graph: _Graph, op: tflite.Operator) -> None:
    # MediaPipe stores weights as float16 constants dequantized at load: fold them to float32.
    value = graph.constant(op.Inputs(0))
    if value is None:
        raise UnsupportedGraphError(f"{graph.name(op.Outputs(0))}: DEQUANTIZE of a non-constant")
    graph.initializers[graph.name(op.Outputs(0))] = value.astype(np.float32)


def _prelu(graph: _Graph, op: tflite.Operator) -> None:
    # The slope is [1, 1, C] (or [C]) and broadcasts against NHWC as ONNX PRelu allows.
    graph.node("PRelu", [graph.value(op.Inputs(0)), graph.value(op.Inputs(1))], [graph.name(op.Outputs(0))])


def _pad(graph: _Graph, op: tflite.Operator) -> None:
    paddings = graph.constant(op.Inputs(1)).astype(np.int64)  # [rank, 2]: before, after per axis
    pads = graph.add_constant("pads", np.concatenate([paddings[:, 0], paddings[:, 1]]))
    graph.node("Pad", [graph.value(op.Inputs(0)), pads], [graph.name(op.Outputs(0))])


def _reshape(graph: _Graph, op: tflite.Operator) -> None:
    shape = graph.add_constant("shape", np.array(graph.shape(op.Outputs(0)), dtype=np.int64))
    graph.node("Reshape", [graph.value(op.Inputs(0)), shape], [graph.name(op.Outputs(0))])


def _concat(graph: _Graph, op: tflite.Operator) -> None:
    options = _options(op, tflite.ConcatenationOptions)
    inputs = [graph.value(op.Inputs(i)) for i in range(op.InputsLength())]
    value = graph.node("Concat", inputs, axis=options.Axis())
    _activation(graph, value, options.FusedActivationFunction(), graph.name(op.Outputs(0)))


def _fully_connected(graph: _Graph, op: tflite.Operator) -> None:
    weights = graph.constant(op.Inputs(1)).astype(np.float32)  # [N, K]
    flat = graph.add_constant("shape", np.array([-1, weights.shape[1]], dtype=np.int64))
    inputs = [graph.node("Reshape", [graph.value(op.Inputs(0)), flat]), graph.add_constant("weight", weights)]
    if op.InputsLength() > 2 and op.Inputs(2) >= 0:
        inputs.append(graph.add_constant("bias", graph.constant(op.Inputs(2)).astype(np.float32)))
    product = graph.node("Gemm", inputs, transB=1)
    shape = graph.add_constant("shape", np.array(graph.shape(op.Outputs(0)), dtype=np.int64))
    fused = _options(op, tflite.FullyConnectedOptions).FusedActivationFunction()
    _activation(graph, graph.node("Reshape", [product, shape]), fused, graph.name(op.Outputs(0)))


def _mean(graph: _Graph, op: tflite.Operator) -> None:
    axes = [int(a) for a in np.atleast_1d(graph.constant(op.Inputs(1)))]
    keepdims = int(_options(op, tflite.ReducerOptions).KeepDims())
    graph.node(
        "ReduceMean", [graph.value(op.Inputs(0))], [graph.name(op.Outputs(0))], axes=axes, keepdims=keepdims
    )


def _resize_bilinear(graph: _Graph, op: tflite.Operator) -> None:
    options = _options(op, tflite.ResizeBilinearOptions)
    if options.AlignCorners():
        mode = "align_corners"
    elif options.HalfPixelCenters():
        mode = "half_pixel"  # TF's half-pixel bilinear: no clamping of negative source coordinates
    else:
        mode = "asymmetric"
    _, height, width, _ = graph.shape(op.Outputs(0))
    batch, _, _, channels = graph.shape(op.Inputs(0))
    sizes = graph.add_constant("sizes", np.array([batch, channels, height, width], dtype=np.int64))
    resized = graph.node(
        "Resize",
        [_to_nchw(graph, graph.value(op.Inputs(0))), "", "", sizes],
        mode="linear",
        coordinate_transformation_mode=mode,
    )
    graph.node("Identity", [_to_nhwc(graph, resized)], [graph.name(op.Outputs(0))])


def _transpose_conv_bias(graph: _Graph, op: tflite.Operator) -> None:
    """MediaPipe's custom ``Convolution2DTransposeBias``: a transposed convolution plus bias; its
    options are TfLiteTransposeConvParams (padding, stride_width, stride_height as int32)."""
    padding, stride_w, stride_h = np.frombuffer(op.CustomOptionsAsNumpy().tobytes(), dtype=np.int32)[:3]
    weights = graph.constant(op.Inputs(1)).astype(np.float32)  # [O, kh, kw, I]
    bias = graph.constant(op.Inputs(2)).astype(np.float32)
    _, in_h, in_w, _ = graph.shape(op.Inputs(0))
    _, out_h, out_w, _ = graph.shape(op.Outputs(0))
    kernel = weights.shape[1:3]
    pads = []
    for size, out, k, s in ((in_h, out_h, kernel[0], stride_h), (in_w, out_w, kernel[1], stride_w)):
        total = (size - 1) * s + k - out  # what the full transposed output has beyond the TFLite one
        if total < 0 or (padding == 2 and total):  # 2: VALID
            raise UnsupportedGraphError(f"{graph.name(op.Outputs(0))}: transposed convolution geometry")
        pads.append((total // 2, total - total // 2))
    deconv = graph.node(
        "ConvTranspose",
        [
            _to_nchw(graph, graph.value(op.Inputs(0))),
            graph.add_constant("weight", weights.transpose(3, 0, 1, 2)),  # -> [I, O, kh, kw]
            graph.add_constant("bias", bias),
        ],
        kernel_shape=list(kernel),
        strides=[int(stride_h), int(stride_w)],
        pads=[pads[0][0], pads[1][0], pads[0][1], pads[1][1]],
    )
    graph.node("Identity", [_to_nhwc(graph, deconv)], [graph.name(op.Outputs(0))])


_CONVERTERS: dict[str, Callable[[_Graph, tflite.Operator], None]] = {
    "CONV_2D": lambda g, op: _conv(g, op, depthwise=False),
    "DEPTHWISE_CONV_2D": lambda g, op: _conv(g, op, depthwise=True),
    "MAX_POOL_2D": lambda g, op: _pool(g, op, "MaxPool"),
    "AVERAGE_POOL_2D": lambda g, op: _pool(g, op, "AveragePool"),
    "ADD": lambda g, op: _binary(g, op, "Add"),
    "MUL": lambda g, op: _binary(g, op, "Mul"),
    "RELU": _unary("Relu"),
    "LOGISTIC": _unary("Sigmoid"),
    "HARD_SWISH": _unary("HardSwish"),
    "PRELU": _prelu,
    "DEQUANTIZE": _dequantize,
    "PAD": _pad,
    "RESHAPE": _reshape,
    "CONCATENATION": _concat,
    "RESIZE_BILINEAR": _resize_bilinear,
    "MEAN": _mean,
    "FULLY_CONNECTED": _fully_connected,
    "custom:Convolution2DTransposeBias": _transpose_conv_bias,
}


def _operator_name(model: tflite.Model, op: tflite.Operator) -> str:
    code = model.OperatorCodes(op.OpcodeIndex())
    builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
    if builtin == tflite.BuiltinOperator.CUSTOM:
        return f"custom:{code.CustomCode().decode()}"
    return _OPERATOR_NAMES.get(builtin, str(builtin))


def convert(tflite_path: Path, onnx_path: Path) -> onnx.ModelProto:
    """Translate a float TFLite graph to ONNX (NHWC inputs and outputs, names kept) and save it."""
    model = tflite.Model.GetRootAsModel(tflite_path.read_bytes(), 0)
    if model.SubgraphsLength() != 1:
        raise UnsupportedGraphError(f"{tflite_path}: {model.SubgraphsLength()} subgraphs; expected 1")
    graph = _Graph(model, model.Subgraphs(0))
    subgraph = graph.subgraph
    for i in range(subgraph.OperatorsLength()):
        op = subgraph.Operators(i)
        name = _operator_name(model, op)
        converter = _CONVERTERS.get(name)
        if converter is None:
            raise UnsupportedGraphError(
                f"{tflite_path.name}: operator {name} is not supported; supported: {', '.join(_CONVERTERS)}"
            )
        converter(graph, op)

    def info(index: int) -> onnx.ValueInfoProto:
        return helper.make_tensor_value_info(graph.name(index), TensorProto.FLOAT, graph.shape(index))

    used = {name for node in graph.nodes for name in node.input}
    onnx_graph = helper.make_graph(
        graph.nodes,
        tflite_path.stem,
        [info(subgraph.Inputs(i)) for i in range(subgraph.InputsLength())],
        [info(subgraph.Outputs(i)) for i in range(subgraph.OutputsLength())],
        [numpy_helper.from_array(value, name) for name, value in graph.initializers.items() if name in used],
    )
    result = helper.make_model(onnx_graph, opset_imports=[helper.make_opsetid("", OPSET)])
    result.ir_version = 8
    onnx.checker.check_model(result)
    onnx_path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(result, str(onnx_path))
    return result


def compare_with_tflite(tflite_path: Path, onnx_path: Path, sample: np.ndarray) -> float:
    """Max |ONNX - TFLite| over every output, for one input (NHWC float32 of the graph's shape)."""
    import onnxruntime as ort
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(tflite_path))
    interpreter.allocate_tensors()
    (input_detail,) = interpreter.get_input_details()
    interpreter.set_tensor(input_detail["index"], sample)
    interpreter.invoke()
    expected = {d["name"]: interpreter.get_tensor(d["index"]) for d in interpreter.get_output_details()}
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    names = list(expected)
    got = session.run(names, {session.get_inputs()[0].name: sample})
    return max(float(np.max(np.abs(g - expected[n]))) for n, g in zip(names, got, strict=True))
