"""MXNet symbol + parameters -> ONNX model, for the operators the project's networks use.

One converter for the age/gender networks (every ``symbols.get_symbol`` network and the original
checkpoint), the MTCNN networks (:mod:`mtcnn.export`) and the ESSH/RetinaFace detectors (:mod:`essh.export`). BatchNorm with ``fix_gamma`` uses
gamma = 1 whatever the checkpoint stores (as MXNet does); a BatchNorm right after a Convolution or
FullyConnected whose output nothing else reads is folded into that layer's weights.

Tensors keep MXNet's names (``<node>_output``), so the ONNX outputs are named like ``sym.list_outputs()``.
"""
import json
import os

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from . import config
from .errors import CheckpointError

OPSET = 17
MXNET_BN_EPS = 1e-3   # MXNet's BatchNorm default eps

_ACTIVATIONS = {"relu": "Relu", "sigmoid": "Sigmoid", "tanh": "Tanh", "softrelu": "Softplus", "softsign": "Softsign"}
_BINARY = {"elemwise_add": "Add", "broadcast_add": "Add", "_Plus": "Add", "_plus": "Add", "_add": "Add",
           "elemwise_sub": "Sub", "broadcast_sub": "Sub", "_minus": "Sub", "_sub": "Sub", "_Minus": "Sub",
           "elemwise_mul": "Mul", "broadcast_mul": "Mul", "_mul": "Mul", "_Mul": "Mul",
           "elemwise_div": "Div", "broadcast_div": "Div", "_div": "Div", "_Div": "Div",
           "_maximum": "Max", "broadcast_maximum": "Max", "_minimum": "Min", "broadcast_minimum": "Min"}
# scalar ops: (ONNX op, scalar is the first operand)
_SCALAR = {"_plus_scalar": ("Add", False), "_minus_scalar": ("Sub", False), "_rminus_scalar": ("Sub", True),
           "_mul_scalar": ("Mul", False), "_div_scalar": ("Div", False), "_rdiv_scalar": ("Div", True)}
_IDENTITY = ("Dropout", "_copy", "identity", "BlockGrad", "stop_gradient")


def _tuple(text, default=()):
    """MXNet attribute text such as ``"(3, 3)"`` -> tuple of ints."""
    if text is None:
        return tuple(default)
    text = text.strip("()[] ")
    return tuple(int(v) for v in text.split(",") if v.strip() and v.strip() != "None")


def _bool(text, default=False):
    return default if text is None else text.strip().lower() in ("true", "1")


class _Graph:
    """ONNX nodes and initializers built while walking the MXNet graph."""

    def __init__(self):
        self.nodes, self.initializers, self._names = [], [], set()

    def const(self, name, array):
        """Add an initializer (unique name) and return its name."""
        base, k = name, 1
        while name in self._names:
            name, k = f"{base}_{k}", k + 1
        self._names.add(name)
        self.initializers.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def node(self, op, inputs, outputs, name, **attrs):
        self.nodes.append(helper.make_node(op, list(inputs), list(outputs), name=name, **attrs))
        return outputs[0]


def _tensor_name(node, index):
    """MXNet's name of output ``index`` of a node (``slice_output0`` for multi-output SliceChannel)."""
    if node["op"] == "SliceChannel":
        return f"{node['name']}_output{index}"
    return f"{node['name']}_output" if index == 0 else f"{node['name']}_output{index}"


def symbol_to_onnx(sym, arg_params, aux_params, input_shape, dynamic_axes=(0,), input_name="data",
                   metadata=None, graph_name="mxnet"):
    """Convert ``sym`` with its parameters to an ``onnx.ModelProto``.

    ``input_shape`` is an example input shape (used for shape inference); the axes in ``dynamic_axes``
    become symbolic (``N``, ``C``, ``H``, ``W``). Parameters are NDArrays or NumPy arrays. ``metadata`` is
    stored as string metadata_props. Raises CheckpointError for an operator this converter lacks.
    """
    params = {k: (v.asnumpy() if hasattr(v, "asnumpy") else np.asarray(v)) for k, v in
              list(arg_params.items()) + list(aux_params.items())}
    shapes = _internal_shapes(sym, input_name, input_shape)
    graph_json = json.loads(sym.tojson())
    nodes = graph_json["nodes"]
    heads = [tuple(h[:2]) for h in graph_json["heads"]]
    consumers = {}
    for node in nodes:
        for src, idx, _ in node["inputs"]:
            consumers.setdefault((src, idx), []).append(node)
    graph = _Graph()
    folded = {}      # id of a Convolution/FullyConnected -> id of the BatchNorm folded into it
    for node_id, node in enumerate(nodes):
        if node["op"] == "BatchNorm":
            src, idx, _ = node["inputs"][0]
            producer = nodes[src]
            if (producer["op"] in ("Convolution", "FullyConnected") and idx == 0
                    and len(consumers[(src, 0)]) == 1 and (src, 0) not in heads
                    and int(node.get("attrs", {}).get("axis", 1)) == 1):
                folded[src] = node_id

    def input_names(node):
        """ONNX tensor names of a node's inputs (a parameter or data variable keeps its own name)."""
        return [nodes[src]["name"] if nodes[src]["op"] == "null" else _tensor_name(nodes[src], idx)
                for src, idx, _ in node["inputs"]]

    used_params = set()
    for node_id, node in enumerate(nodes):
        op = node["op"]
        if op == "null":
            continue
        if op == "BatchNorm" and node["inputs"][0][0] in folded:
            continue     # emitted by the layer it is folded into
        inputs = input_names(node)
        bn = nodes[folded[node_id]] if node_id in folded else None
        out_name = _tensor_name(bn if bn is not None else node, 0)
        _convert_node(graph, node, inputs, out_name, params, shapes, bn, nodes, used_params)

    for name in used_params:
        if name not in params:
            raise CheckpointError(f"parameter '{name}' is missing from the checkpoint")
    symbolic = {0: "N", 1: "C", 2: "H", 3: "W"}
    dims = [symbolic.get(axis, f"d{axis}") if axis in dynamic_axes else int(d) for axis, d in enumerate(input_shape)]
    graph_input = helper.make_tensor_value_info(input_name, TensorProto.FLOAT, dims)
    # Outputs declare their rank only: their sizes follow the dynamic input axes.
    outputs = [helper.make_tensor_value_info(_tensor_name(nodes[src], idx), TensorProto.FLOAT,
                                             [None] * len(shapes[_tensor_name(nodes[src], idx)]))
               for src, idx in heads]
    onnx_graph = helper.make_graph(graph.nodes, graph_name, [graph_input], outputs, graph.initializers)
    model = helper.make_model(onnx_graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="agegender.onnx_export")
    model.ir_version = 8
    for key, value in (metadata or {}).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = str(key), str(value)
    onnx.checker.check_model(model)
    return model


def _internal_shapes(sym, input_name, input_shape):
    """Shape of every internal output for the example input, by MXNet tensor name."""
    internals = sym.get_internals()
    _, out_shapes, _ = internals.infer_shape(**{input_name: tuple(input_shape)})
    return dict(zip(internals.list_outputs(), out_shapes))


def _convert_node(graph, node, inputs, out, params, shapes, bn, nodes, used_params):
    """Append the ONNX nodes of one MXNet node (plus a folded BatchNorm ``bn``) writing tensor ``out``."""
    op, name, attrs = node["op"], node["name"], node.get("attrs", {})
    if op in ("Convolution", "Deconvolution", "FullyConnected"):
        weight_name = inputs[1]
        used_params.add(weight_name)
        weight = params[weight_name].astype(np.float64)
        bias = None
        if not _bool(attrs.get("no_bias")):
            used_params.add(inputs[2])
            bias = params[inputs[2]].astype(np.float64)
        if bn is not None:
            weight, bias = _fold_batchnorm(weight, bias, bn, params, used_params, nodes)
        w = graph.const(weight_name, weight.astype(np.float32))
        operands = [inputs[0], w] + ([graph.const(f"{name}_bias", bias.astype(np.float32))] if bias is not None else [])
        if op == "FullyConnected":
            data = operands[0]
            if _bool(attrs.get("flatten"), True) and len(shapes[_producer_tensor(node, nodes)]) > 2:
                data = graph.node("Flatten", [data], [f"{name}_flat"], f"{name}_flatten", axis=1)
            graph.node("Gemm", [data] + operands[1:], [out], name, transB=1)
            return
        kernel = _tuple(attrs.get("kernel"))
        pad = _tuple(attrs.get("pad"), (0,) * len(kernel)) or (0,) * len(kernel)
        conv_attrs = dict(kernel_shape=list(kernel), strides=list(_tuple(attrs.get("stride"), (1,) * len(kernel)) or
                                                                 (1,) * len(kernel)),
                          dilations=list(_tuple(attrs.get("dilate"), (1,) * len(kernel)) or (1,) * len(kernel)),
                          pads=list(pad) * 2, group=int(attrs.get("num_group", 1)))
        if op == "Deconvolution":
            if any(_tuple(attrs.get("adj"))) or _tuple(attrs.get("target_shape")):
                raise CheckpointError(f"Deconvolution '{name}': adj / target_shape are not supported")
            graph.node("ConvTranspose", operands, [out], name, **conv_attrs)
        else:
            graph.node("Conv", operands, [out], name, **conv_attrs)
        return
    if op == "BatchNorm":
        gamma, beta, mean, var = _batchnorm_arrays(node, params, used_params, nodes)
        if int(attrs.get("axis", 1)) != 1:
            raise CheckpointError(f"BatchNorm '{name}': only axis 1 is supported")
        names = [graph.const(f"{name}_{k}", v.astype(np.float32))
                 for k, v in (("gamma", gamma), ("beta", beta), ("mean", mean), ("var", var))]
        graph.node("BatchNormalization", [inputs[0]] + names, [out], name,
                   epsilon=float(attrs.get("eps", MXNET_BN_EPS)))
        return
    if op == "Activation":
        act = attrs.get("act_type")
        if act not in _ACTIVATIONS:
            raise CheckpointError(f"Activation '{name}': act_type '{act}' is not supported")
        graph.node(_ACTIVATIONS[act], inputs[:1], [out], name)
        return
    if op == "LeakyReLU":
        act = attrs.get("act_type", "leaky")
        if act == "prelu":
            used_params.add(inputs[1])
            rank = len(shapes[_producer_tensor(node, nodes)])
            slope = params[inputs[1]].astype(np.float32).reshape((-1,) + (1,) * (rank - 2))
            graph.node("PRelu", [inputs[0], graph.const(inputs[1], slope)], [out], name)
        elif act == "leaky":
            graph.node("LeakyRelu", inputs[:1], [out], name, alpha=float(attrs.get("slope", 0.25)))
        elif act == "elu":
            graph.node("Elu", inputs[:1], [out], name, alpha=float(attrs.get("slope", 0.25)))
        else:
            raise CheckpointError(f"LeakyReLU '{name}': act_type '{act}' is not supported")
        return
    if op == "Pooling":
        _pooling(graph, name, attrs, inputs[0], out)
        return
    if op == "Flatten":
        graph.node("Flatten", inputs, [out], name, axis=1)
        return
    if op in ("Concat", "concat"):
        graph.node("Concat", inputs, [out], name, axis=int(attrs.get("dim", 1)))
        return
    if op in _BINARY:
        graph.node(_BINARY[op], inputs, [out], name)
        return
    if op in _SCALAR:
        onnx_op, scalar_first = _SCALAR[op]
        scalar = graph.const(f"{name}_scalar", np.array(float(attrs["scalar"]), np.float32))
        graph.node(onnx_op, [scalar, inputs[0]] if scalar_first else [inputs[0], scalar], [out], name)
        return
    if op in _IDENTITY:
        graph.node("Identity", inputs[:1], [out], name)
        return
    if op == "sqrt":
        graph.node("Sqrt", inputs, [out], name)
        return
    if op in ("sum", "mean"):
        _reduce(graph, name, op, attrs, inputs[0], out)
        return
    if op in ("softmax", "SoftmaxActivation", "SoftmaxOutput", "Softmax"):
        axis = int(attrs.get("axis", -1)) if op == "softmax" else 1
        if op == "SoftmaxActivation" and attrs.get("mode", "instance") == "instance":
            flat = graph.node("Flatten", inputs[:1], [f"{name}_flat"], f"{name}_flatten", axis=1)
            soft = graph.node("Softmax", [flat], [f"{name}_soft"], f"{name}_softmax", axis=1)
            shape = graph.node("Shape", inputs[:1], [f"{name}_shape"], f"{name}_getshape")
            graph.node("Reshape", [soft, shape], [out], name)
            return
        graph.node("Softmax", inputs[:1], [out], name, axis=axis)
        return
    if op == "Reshape":
        shape = _tuple(attrs.get("shape"))
        if _bool(attrs.get("reverse")) or any(v < -1 for v in shape):
            raise CheckpointError(f"Reshape '{name}': only shape codes 0 and -1 are supported")
        graph.node("Reshape", [inputs[0], graph.const(f"{name}_shape", np.array(shape, np.int64))], [out], name)
        return
    if op == "SliceChannel":
        _slice_channel(graph, node, attrs, inputs[0], shapes[_producer_tensor(node, nodes)])
        return
    if op == "slice_like":
        _slice_like(graph, name, attrs, inputs, out)
        return
    if op == "UpSampling":
        if attrs.get("sample_type", "nearest") != "nearest" or int(attrs.get("num_args", 1)) != 1:
            raise CheckpointError(f"UpSampling '{name}': only single-input nearest upsampling is supported")
        scale = float(attrs["scale"])
        scales = graph.const(f"{name}_scales", np.array([1, 1, scale, scale], np.float32))
        graph.node("Resize", [inputs[0], "", scales], [out], name, mode="nearest",
                   coordinate_transformation_mode="asymmetric", nearest_mode="floor")
        return
    raise CheckpointError(f"operator '{op}' (node '{name}') has no ONNX conversion")


def _producer_tensor(node, nodes):
    """MXNet name of the tensor feeding a node's first input."""
    src, idx, _ = node["inputs"][0]
    producer = nodes[src]
    return producer["name"] if producer["op"] == "null" else _tensor_name(producer, idx)


def _batchnorm_arrays(bn, params, used_params, nodes):
    """(gamma, beta, mean, var) of a BatchNorm node in float64, gamma = 1 under fix_gamma."""
    names = [nodes[src]["name"] for src, _, _ in bn["inputs"][1:5]]
    used_params.update(names[1:] if _bool(bn.get("attrs", {}).get("fix_gamma"), True) else names)
    missing = [n for n in names[1:] if n not in params]
    if missing:
        raise CheckpointError(f"BatchNorm '{bn['name']}': parameter '{missing[0]}' is missing from the checkpoint")
    beta, mean, var = (params[n].astype(np.float64) for n in names[1:])
    if _bool(bn.get("attrs", {}).get("fix_gamma"), True):
        gamma = np.ones_like(beta)    # MXNet ignores the stored gamma
    else:
        gamma = params[names[0]].astype(np.float64)
    return gamma, beta, mean, var


def _fold_batchnorm(weight, bias, bn, params, used_params, nodes):
    """Weights and bias of a Convolution / FullyConnected followed by BatchNorm ``bn``, as one layer."""
    gamma, beta, mean, var = _batchnorm_arrays(bn, params, used_params, nodes)
    scale = gamma / np.sqrt(var + float(bn.get("attrs", {}).get("eps", MXNET_BN_EPS)))
    weight = weight * scale.reshape((-1,) + (1,) * (weight.ndim - 1))
    bias = (np.zeros_like(mean) if bias is None else bias) - mean
    return weight, bias * scale + beta


def _pooling(graph, name, attrs, data, out):
    pool_type = attrs.get("pool_type", "max")
    if pool_type not in ("max", "avg"):
        raise CheckpointError(f"Pooling '{name}': pool_type '{pool_type}' is not supported")
    if _bool(attrs.get("global_pool")):
        graph.node("GlobalMaxPool" if pool_type == "max" else "GlobalAveragePool", [data], [out], name)
        return
    kernel = _tuple(attrs.get("kernel"))
    stride = _tuple(attrs.get("stride")) or (1,) * len(kernel)
    pad = _tuple(attrs.get("pad")) or (0,) * len(kernel)
    convention = attrs.get("pooling_convention", "valid")
    if convention not in ("valid", "full"):
        raise CheckpointError(f"Pooling '{name}': pooling_convention '{convention}' is not supported")
    pool_attrs = dict(kernel_shape=list(kernel), strides=list(stride), pads=list(pad) * 2,
                      ceil_mode=int(convention == "full"))
    if pool_type == "max":
        graph.node("MaxPool", [data], [out], name, **pool_attrs)
    else:
        graph.node("AveragePool", [data], [out], name,
                   count_include_pad=int(_bool(attrs.get("count_include_pad"), True)), **pool_attrs)


def _reduce(graph, name, op, attrs, data, out):
    axes = _tuple(attrs.get("axis"))
    keepdims = int(_bool(attrs.get("keepdims")))
    if _bool(attrs.get("exclude")):
        raise CheckpointError(f"{op} '{name}': exclude=True is not supported")
    if op == "sum":
        operands = [data] + ([graph.const(f"{name}_axes", np.array(axes, np.int64))] if axes else [])
        graph.node("ReduceSum", operands, [out], name, keepdims=keepdims)
    else:
        extra = {"axes": list(axes)} if axes else {}
        graph.node("ReduceMean", [data], [out], name, keepdims=keepdims, **extra)


def _slice_channel(graph, node, attrs, data, in_shape):
    name = node["name"]
    parts = int(attrs["num_outputs"])
    axis = int(attrs.get("axis", 1))
    size = in_shape[axis] // parts
    outs = [_tensor_name(node, i) for i in range(parts)]
    squeeze = _bool(attrs.get("squeeze_axis"))
    split_outs = [o + "_unsqueezed" for o in outs] if squeeze else outs
    graph.node("Split", [data, graph.const(f"{name}_split", np.full(parts, size, np.int64))], split_outs, name,
               axis=axis)
    if squeeze:
        axes = graph.const(f"{name}_axes", np.array([axis], np.int64))
        for src, dst in zip(split_outs, outs):
            graph.node("Squeeze", [src, axes], [dst], f"{dst}_squeeze")


def _slice_like(graph, name, attrs, inputs, out):
    """Crop ``inputs[0]`` to the size of ``inputs[1]`` along ``axes`` (all axes when empty), from index 0."""
    axes = _tuple(attrs.get("axes"))
    if not axes:
        raise CheckpointError(f"slice_like '{name}': axes must be given")
    shape = graph.node("Shape", [inputs[1]], [f"{name}_likeshape"], f"{name}_shape")
    axes_const = graph.const(f"{name}_axes", np.array(axes, np.int64))
    ends = graph.node("Gather", [shape, axes_const], [f"{name}_ends"], f"{name}_gather", axis=0)
    starts = graph.const(f"{name}_starts", np.zeros(len(axes), np.int64))
    graph.node("Slice", [inputs[0], starts, ends, axes_const], [out], name)


def save_model(model, path):
    """Write an ONNX model atomically (temporary file + rename), creating the folder."""
    from .checkpoint import _atomic_write
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    _atomic_write(path, lambda tmp: onnx.save(model, tmp))
    return path


def export_agegender(model, out_path, image_size=config.IMAGE_SIZE):
    """Export age/gender checkpoint ``"prefix,epoch"`` (cut at ``fc1_output``) with a dynamic batch axis."""
    from .checkpoint import load_checkpoint, parse_model_spec
    prefix, epoch = parse_model_spec(model)
    sym, arg_params, aux_params = load_checkpoint(prefix, epoch)
    if config.OUTPUT_LAYER not in sym.get_internals().list_outputs():
        raise CheckpointError(f"{prefix}-symbol.json: has no '{config.OUTPUT_LAYER}' layer, not an age/gender network")
    sym = sym.get_internals()[config.OUTPUT_LAYER]
    from .model import inference_defaults
    defaults = inference_defaults(prefix)
    metadata = {"kind": "agegender", "source": model, "age_decoding": defaults["age_decoding"],
                "flip": "true" if defaults["flip"] else "false"}
    onnx_model = symbol_to_onnx(sym, arg_params, aux_params, (1, 3) + tuple(image_size), dynamic_axes=(0,),
                                metadata=metadata, graph_name="agegender")
    return save_model(onnx_model, out_path)
