"""The four MTCNN networks (SPEC §6.1) as MXNet symbols, with the original checkpoints' parameter names.

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
