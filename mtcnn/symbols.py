"""The four MTCNN networks as MXNet symbols, with the original checkpoints' parameter names.

Inputs are already normalised, ``(x - 127.5) * 0.0078125`` on BGR pixels, CHW. Each symbol ends in plain
softmax / fully connected outputs (no loss layers), so it binds without label arrays.
"""
import mxnet as mx


def _conv_prelu(data, num_filter, kernel, suffix):
    conv = mx.sym.Convolution(data=data, num_filter=num_filter, kernel=(kernel, kernel), name=f"conv{suffix}")
    return mx.sym.LeakyReLU(data=conv, act_type="prelu", name=f"prelu{suffix}")


def _max_pool(data, kernel, name):
    # 'full' = ceil((in - k) / s) + 1, as Caffe and the original checkpoints compute it.
    return mx.sym.Pooling(data=data, kernel=(kernel, kernel), stride=(2, 2), pool_type="max",
                          pooling_convention="full", name=name)


def _fc(data, num_hidden, name):
    return mx.sym.FullyConnected(data=data, num_hidden=num_hidden, name=name)


def _fc_prelu(data, num_hidden, fc_name, prelu_name):
    return mx.sym.LeakyReLU(data=_fc(data, num_hidden, fc_name), act_type="prelu", name=prelu_name)


def pnet(conv1_filters=10):
    """PNet (det1): fully convolutional; outputs [box regression (N,4,H',W'), face probability (N,2,H',W')].

    ``conv1_filters`` above 10 adds filters (see ``detector.widen_first_conv``).
    """
    data = mx.sym.Variable("data")
    body = _conv_prelu(data, conv1_filters, 3, "1")
    body = _max_pool(body, 2, "pool1")
    body = _conv_prelu(body, 16, 3, "2")
    body = _conv_prelu(body, 32, 3, "3")
    regression = mx.sym.Convolution(data=body, num_filter=4, kernel=(1, 1), name="conv4_2")
    logits = mx.sym.Convolution(data=body, num_filter=2, kernel=(1, 1), name="conv4_1")
    prob = mx.sym.softmax(data=logits, axis=1, name="prob1")
    return mx.sym.Group([regression, prob])


def rnet(conv1_filters=28):
    """RNet (det2), 3x24x24 input; outputs [box regression (N,4), face probability (N,2)]."""
    data = mx.sym.Variable("data")
    body = _conv_prelu(data, conv1_filters, 3, "1")
    body = _max_pool(body, 3, "pool1")
    body = _conv_prelu(body, 48, 3, "2")
    body = _max_pool(body, 3, "pool2")
    body = _conv_prelu(body, 64, 2, "3")
    body = _fc_prelu(body, 128, "conv4", "prelu4")
    regression = _fc(body, 4, "conv5_2")
    prob = mx.sym.softmax(data=_fc(body, 2, "conv5_1"), axis=1, name="prob1")
    return mx.sym.Group([regression, prob])


def onet():
    """ONet (det3), 3x48x48 input; outputs [landmarks (N,10), box regression (N,4), face probability (N,2)].

    Landmarks are x1..x5 then y1..y5, relative to the input box (0..1).
    """
    data = mx.sym.Variable("data")
    body = _conv_prelu(data, 32, 3, "1")
    body = _max_pool(body, 3, "pool1")
    body = _conv_prelu(body, 64, 3, "2")
    body = _max_pool(body, 3, "pool2")
    body = _conv_prelu(body, 64, 3, "3")
    body = _max_pool(body, 2, "pool3")
    body = _conv_prelu(body, 128, 2, "4")
    body = _fc_prelu(body, 256, "conv5", "prelu5")
    landmarks = _fc(body, 10, "conv6_3")
    regression = _fc(body, 4, "conv6_2")
    prob = mx.sym.softmax(data=_fc(body, 2, "conv6_1"), axis=1, name="prob1")
    return mx.sym.Group([landmarks, regression, prob])


def lnet(conv1_filters=28):
    """LNet (det4), 15x24x24 input = five 3-channel patches, one per landmark.

    Outputs five (N,2) arrays: the (x, y) of landmark i inside its patch, 0..1.
    """
    data = mx.sym.Variable("data")
    patches = mx.sym.SliceChannel(data=data, num_outputs=5, axis=1, name="slice")
    branches = []
    for i in range(1, 6):
        body = _conv_prelu(patches[i - 1], conv1_filters, 3, f"1_{i}")
        body = _max_pool(body, 3, f"pool1_{i}")
        body = _conv_prelu(body, 48, 3, f"2_{i}")
        body = _max_pool(body, 3, f"pool2_{i}")
        branches.append(_conv_prelu(body, 64, 2, f"3_{i}"))
    body = mx.sym.Concat(*branches, dim=1, name="concat")
    body = _fc_prelu(body, 256, "fc4", "prelu4")
    outputs = [_fc(_fc_prelu(body, 64, f"fc4_{i}", f"prelu4_{i}"), 2, f"fc5_{i}") for i in range(1, 6)]
    return mx.sym.Group(outputs)


# det1..det4 in cascade order, with the input shape each network is checked against.
NETWORKS = {
    "det1": (pnet, (1, 3, 12, 12)),
    "det2": (rnet, (1, 3, 24, 24)),
    "det3": (onet, (1, 3, 48, 48)),
    "det4": (lnet, (1, 15, 24, 24)),
}


# ------------------------------------------------------------------------------------------ fast forms
#
# The detector runs P-, R- and ONet in an equivalent "fast form" (built from the checkpoint by
# mtcnn.detector.fast_network): every PReLU becomes a convolution (or FC) with the filters [W; -W] and a
# fused ReLU, giving relu(y) and relu(-y), followed by a 1x1 convolution (FC) with weights [I, -diag(g)]
# that adds them up: relu(y) - g * relu(-y) = prelu(y), bit for bit, because exactly one of the two terms
# is non-zero and the other weights are zero. MXNet's PReLU (and softmax) are not MKL-DNN operators: each
# costs a layout conversion of its input and output that takes longer than the convolutions themselves;
# these layers stay in MKL-DNN's blocked layout (and in onnxruntime's NCHWc kernels). The output heads are
# merged into one layer (logits first; the softmax is taken on the candidates in NumPy).

# (kind, name, filters or units, kernel): "conv" = conv + PReLU, "pool" = max pool 'full' (kernel, stride 2),
# "fc" = fully connected + PReLU ("name" is the FC's; its PReLU is PRELU_NAMES[name]).
LAYERS = {
    "det1": [("conv", "1", 10, 3), ("pool", "pool1", 0, 2), ("conv", "2", 16, 3), ("conv", "3", 32, 3)],
    "det2": [("conv", "1", 28, 3), ("pool", "pool1", 0, 3), ("conv", "2", 48, 3), ("pool", "pool2", 0, 3),
             ("conv", "3", 64, 2), ("fc", "conv4", 128, 0)],
    "det3": [("conv", "1", 32, 3), ("pool", "pool1", 0, 3), ("conv", "2", 64, 3), ("pool", "pool2", 0, 3),
             ("conv", "3", 64, 3), ("pool", "pool3", 0, 2), ("conv", "4", 128, 2), ("fc", "conv5", 256, 0)],
}
PRELU_NAMES = {"conv4": "prelu4", "conv5": "prelu5"}
# Output heads of each network (layer name, outputs), merged in this order: logits, box regression, landmarks.
HEADS = {
    "det1": [("conv4_1", 2), ("conv4_2", 4)],
    "det2": [("conv5_1", 2), ("conv5_2", 4)],
    "det3": [("conv6_1", 2), ("conv6_2", 4), ("conv6_3", 10)],
}
# MKL-DNN runs convolutions and pools on channel blocks of 16; other counts are padded with zero filters
# (a 6-filter 1x1 convolution, for one, falls back to a plain-layout GEMM and a slow layout conversion).
CHANNEL_BLOCK = 16


def _block(channels):
    return -(-channels // CHANNEL_BLOCK) * CHANNEL_BLOCK


def fast_widths(network):
    """Per conv/FC layer of ``network``: (filters of its [W; -W] layer, outputs of its mix), then the heads'."""
    widths = [(_block(2 * units), _block(units)) if kind == "conv" else (2 * units, units)
              for kind, _, units, _ in LAYERS[network] if kind != "pool"]
    outputs = sum(n for _, n in HEADS[network])
    return widths, _block(outputs) if network == "det1" else outputs


def _fast_prelu(data, units, name, spatial):
    """``relu`` of a [y; -y] layer, then the [I, -diag(g)] mix back to ``units`` channels (see above)."""
    body = mx.sym.Activation(data=data, act_type="relu", name=f"{name}_relu")
    if spatial:
        return mx.sym.Convolution(data=body, num_filter=units, kernel=(1, 1), no_bias=True, name=f"{name}_mix")
    return mx.sym.FullyConnected(data=body, num_hidden=units, no_bias=True, name=f"{name}_mix")


def fast_symbol(network):
    """The fast form of ``det1``..``det3``: one output, (N, K[, H', W']) = logits, regression[, landmarks], 0...

    Parameter names: ``<layer>_pn_weight/_bias`` for a [W; -W] layer, ``<layer>_mix_weight`` for its mix,
    ``heads_weight/_bias`` for the merged heads (det1's padded to 16 outputs).
    """
    body = mx.sym.Variable("data")
    widths, outputs = fast_widths(network)
    widths = iter(widths)
    for kind, name, _, kernel in LAYERS[network]:
        if kind == "pool":
            body = _max_pool(body, kernel, name)
            continue
        layer = f"conv{name}" if kind == "conv" else name
        filters, units = next(widths)
        if kind == "conv":
            body = mx.sym.Convolution(data=body, num_filter=filters, kernel=(kernel, kernel), name=f"{layer}_pn")
        else:
            body = mx.sym.FullyConnected(data=body, num_hidden=filters, name=f"{layer}_pn")
        body = _fast_prelu(body, units, layer, spatial=kind == "conv")
    if network == "det1":
        return mx.sym.Convolution(data=body, num_filter=outputs, kernel=(1, 1), name="heads")
    return mx.sym.FullyConnected(data=body, num_hidden=outputs, name="heads")
