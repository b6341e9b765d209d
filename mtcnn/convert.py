"""Default MTCNN weights: P-, R- and O-Net from the MIT-licensed PyPI wheel ``mtcnn==1.0.0``, as MXNet checkpoints.

The wheel ships Keras-layout arrays (joblib pickles, lz4-compressed) in ``mtcnn/assets/weights``. Once
the layout is converted they equal the original ``det1``..``det3`` exactly (see ../shared/README.md).
There is no licence-clean LNet (``det4``), so the default detector runs without landmark refinement.
"""
import hashlib
import io
import os
import zipfile

import joblib
import mxnet as mx
import numpy as np

from agegender import config
from agegender.checkpoint import checkpoint_paths, save_checkpoint

from .detector import EPOCH
from .symbols import NETWORKS

WHEEL_NAME, WHEEL_VERSION = "mtcnn", "1.0.0"
WHEEL_SHA256 = "0a96b4868e56db9ae984449519642be6dba03240e608a67e928ebb47833e9144"

# Per network: the wheel's file and, in the order its list holds the arrays, our parameter name and
# how the array is laid out there.
LAYOUTS = {
    "det1": ("pnet.lz4", [
        ("conv1_weight", "first_conv"), ("conv1_bias", "vector"), ("prelu1_gamma", "vector"),
        ("conv2_weight", "conv"), ("conv2_bias", "vector"), ("prelu2_gamma", "vector"),
        ("conv3_weight", "conv"), ("conv3_bias", "vector"), ("prelu3_gamma", "vector"),
        ("conv4_2_weight", "conv"), ("conv4_2_bias", "vector"),
        ("conv4_1_weight", "conv"), ("conv4_1_bias", "vector"),
    ]),
    "det2": ("rnet.lz4", [
        ("conv1_weight", "first_conv"), ("conv1_bias", "vector"), ("prelu1_gamma", "vector"),
        ("conv2_weight", "conv"), ("conv2_bias", "vector"), ("prelu2_gamma", "vector"),
        ("conv3_weight", "conv"), ("conv3_bias", "vector"), ("prelu3_gamma", "vector"),
        ("conv4_weight", "first_fc"), ("conv4_bias", "vector"), ("prelu4_gamma", "vector"),
        ("conv5_2_weight", "fc"), ("conv5_2_bias", "vector"),
        ("conv5_1_weight", "fc"), ("conv5_1_bias", "vector"),
    ]),
    "det3": ("onet.lz4", [
        ("conv1_weight", "first_conv"), ("conv1_bias", "vector"), ("prelu1_gamma", "vector"),
        ("conv2_weight", "conv"), ("conv2_bias", "vector"), ("prelu2_gamma", "vector"),
        ("conv3_weight", "conv"), ("conv3_bias", "vector"), ("prelu3_gamma", "vector"),
        ("conv4_weight", "conv"), ("conv4_bias", "vector"), ("prelu4_gamma", "vector"),
        ("conv5_weight", "first_fc"), ("conv5_bias", "vector"), ("prelu5_gamma", "vector"),
        ("conv6_2_weight", "fc"), ("conv6_2_bias", "vector"),
        ("conv6_3_weight", "fc"), ("conv6_3_bias", "vector"),
        ("conv6_1_weight", "fc"), ("conv6_1_bias", "vector"),
    ]),
}


def to_mxnet_layout(array, kind, target_shape, fc_input_shape=None):
    """Convert one Keras array to the MXNet layout of ``target_shape``.

    conv: (kh, kw, in, out) -> (out, in, kh, kw); the first conv also reverses its input channels
    (the wheel feeds RGB, the original BGR). fc: (in, out) -> (out, in); the first fc also re-orders
    its inputs from the wheel's flattening (Keras permutes to W, H, C before flattening) to MXNet's
    C, H, W, with ``fc_input_shape`` = (C, H, W) of the feature map it flattens. PReLU slopes and biases
    are only reshaped.
    """
    array = np.asarray(array, dtype=np.float32)
    if kind in ("conv", "first_conv"):
        converted = array.transpose(3, 2, 0, 1)
        if kind == "first_conv":
            converted = converted[:, ::-1]
    elif kind == "first_fc":
        channels, height, width = fc_input_shape
        converted = array.reshape(width, height, channels, -1).transpose(3, 2, 1, 0)
    elif kind == "fc":
        converted = array.T
    else:
        converted = array
    return np.ascontiguousarray(converted.reshape(target_shape))


def read_wheel_arrays(wheel_path):
    """Return ``{"pnet.lz4": [arrays], ...}`` read from the wheel (after checking its SHA-256)."""
    with open(wheel_path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    if digest != WHEEL_SHA256:
        raise ValueError(f"{wheel_path}: SHA-256 {digest} is not the one of {WHEEL_NAME}=={WHEEL_VERSION}")
    arrays = {}
    with zipfile.ZipFile(wheel_path) as wheel:
        for file_name, _ in LAYOUTS.values():
            # A pickle, but from the pinned registry wheel verified above, never from user input.
            arrays[file_name] = joblib.load(io.BytesIO(wheel.read(f"mtcnn/assets/weights/{file_name}")))
    return arrays


def convert_arrays(network, keras_arrays):
    """Turn the wheel's array list for ``network`` ("det1".."det3") into ``{param name: np.ndarray}``."""
    build, input_shape = NETWORKS[network]
    _, layout = LAYOUTS[network]
    if len(keras_arrays) != len(layout):
        raise ValueError(f"{network}: the wheel holds {len(keras_arrays)} arrays, expected {len(layout)}")
    symbol = build()
    arg_shapes, _, _ = symbol.infer_shape(data=input_shape)
    shapes = dict(zip(symbol.list_arguments(), arg_shapes))
    converted = {}
    for (name, kind), array in zip(layout, keras_arrays):
        fc_input_shape = None
        if kind == "first_fc":
            fc_layer = symbol.get_internals()[name[:-len("_weight")] + "_output"]
            fc_input_shape = fc_layer.get_children()[0].infer_shape(data=input_shape)[1][0][1:]
        converted[name] = to_mxnet_layout(array, kind, shapes[name], fc_input_shape)
    return converted


def convert_wheel(wheel_path, model_dir):
    """Write det1..det3 checkpoints (epoch 1) converted from the wheel into ``model_dir``."""
    arrays = read_wheel_arrays(wheel_path)
    for network, (file_name, _) in LAYOUTS.items():
        params = {name: mx.nd.array(value) for name, value in convert_arrays(network, arrays[file_name]).items()}
        build, _ = NETWORKS[network]
        save_checkpoint(os.path.join(model_dir, network), EPOCH, build(), params, {})


def is_converted(model_dir):
    """True when det1..det3 symbol and params files all exist in ``model_dir``."""
    return all(os.path.isfile(path) for network in LAYOUTS
               for path in checkpoint_paths(os.path.join(model_dir, network), EPOCH))


def convert_default(model_dir=config.MTCNN_MODEL_DIR):
    """Fetch ``mtcnn==1.0.0`` and convert its weights into ``model_dir``; a no-op when already converted."""
    if is_converted(model_dir):
        return model_dir
    from agegender.wheels import fetch_wheel
    convert_wheel(fetch_wheel(WHEEL_NAME, WHEEL_VERSION), model_dir)
    print(f"MTCNN P/R/O-Net weights from {WHEEL_NAME}=={WHEEL_VERSION} converted into {model_dir}")
    return model_dir
