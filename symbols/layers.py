"""Layer helpers shared by the network bodies and heads: BatchNorm, activations, input scaling."""
import mxnet as mx

BN_MOMENTUM = 0.9
BN_EPS = 2e-5            # insightface convention, used by the heads and the ResNet family
MXNET_DEFAULT_BN_EPS = 1e-3  # what fmobilenet's conv blocks get by not setting eps

_LEAKY_RELU_TYPES = ("prelu", "leaky", "elu", "selu", "gelu", "rrelu")
_ACTIVATION_TYPES = ("relu", "sigmoid", "tanh", "softrelu", "softsign")
ACT_TYPES = _LEAKY_RELU_TYPES + _ACTIVATION_TYPES


def batchnorm(data, name, fix_gamma=False, eps=BN_EPS):
    """BatchNorm with momentum 0.9; ``fix_gamma=True`` makes MXNet use gamma = 1 whatever is stored."""
    return mx.sym.BatchNorm(data=data, fix_gamma=fix_gamma, eps=eps, momentum=BN_MOMENTUM, name=name)


def activation(data, act_type, name):
    """Activation layer named ``name``.

    ``"prelu"`` is a per-channel learned slope (parameter ``<name>_gamma``); the other LeakyReLU types and
    the plain ``mx.sym.Activation`` types are accepted too. Anything else raises ValueError.
    """
    if act_type in _LEAKY_RELU_TYPES:
        return mx.sym.LeakyReLU(data=data, act_type=act_type, name=name)
    if act_type in _ACTIVATION_TYPES:
        return mx.sym.Activation(data=data, act_type=act_type, name=name)
    raise ValueError(f"unknown activation '{act_type}'; choose one of {', '.join(ACT_TYPES)}")


def conv(data, num_filter, kernel, name, stride=1, num_group=1, no_bias=True):
    """Square ``kernel`` x ``kernel`` convolution with 'same' padding (kernel // 2), no bias by default."""
    pad = kernel // 2
    return mx.sym.Convolution(data=data, num_filter=num_filter, kernel=(kernel, kernel), stride=(stride, stride),
                              pad=(pad, pad), num_group=num_group, no_bias=no_bias, name=name)


def subtract_channel_means(data, means):
    """``data`` minus one constant per channel (``means`` in channel order), without adding parameters."""
    channels = mx.sym.split(data, num_outputs=len(means), axis=1)
    return mx.sym.concat(*[channels[i] - float(mean) for i, mean in enumerate(means)], dim=1)


def scale_input(data):
    """``(x - 127.5) * 0.0078125`` in the graph, so the networks take raw 0..255 RGB pixels."""
    return (data - 127.5) * 0.0078125
