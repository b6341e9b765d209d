"""ResNet family (``--network r<depth>``, the original's depths and units) with insightface-style layer names.

Four stages; the first unit of each halves the resolution (112 -> 7 after four stages) and has a projection
shortcut (``_conv1sc`` + BN ``_sc``). Depths below 101 use basic units with filters 64, 64, 128, 256, 512;
the others bottleneck units with 64, 256, 512, 1024, 2048. Units:

* 1: post-activation (conv -> BN -> act ..., act after the sum)
* 2: pre-activation (BN -> act -> conv ...)
* 3: insightface "IR" (BN -> conv -> BN -> act -> conv -> BN, no act after the sum), the default
* ``"3x"``: IR bottleneck of width C/2 whose 3x3 convolution has 32 groups (ResNeXt style)

Every BatchNorm here: fix_gamma False, eps 2e-5, momentum 0.9 (the data BN of ``version_input=2`` has a
fixed gamma).
"""
import functools

import mxnet as mx

from agegender import config

from .heads import get_fc1
from .layers import activation, batchnorm, conv, scale_input
from .registry import register

UNITS_PER_STAGE = {
    18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 49: (3, 4, 14, 3), 50: (3, 4, 14, 3), 74: (3, 6, 24, 3),
    90: (3, 8, 30, 3), 100: (3, 13, 30, 3), 101: (3, 4, 23, 3), 124: (3, 13, 40, 5), 152: (3, 8, 36, 3),
    200: (3, 24, 36, 3), 269: (3, 30, 48, 8),
}
UNIT_VERSIONS = (1, 2, 3, "3x")
RESNEXT_GROUPS = 32


def _shortcut(data, num_filter, stride, dim_match, name):
    if dim_match:
        return data
    return batchnorm(conv(data, num_filter, 1, f"{name}_conv1sc", stride=stride), f"{name}_sc")


def _squeeze_excite(body, num_filter, name, act_type):
    """Channel attention: global pool -> 1x1 conv C/16 -> act -> 1x1 conv C -> sigmoid -> rescale."""
    weights = mx.sym.Pooling(data=body, global_pool=True, kernel=(7, 7), pool_type="avg", name=f"{name}_se_pool1")
    weights = conv(weights, max(num_filter // 16, 1), 1, f"{name}_se_conv1", no_bias=False)
    weights = activation(weights, act_type, f"{name}_se_relu1")
    weights = conv(weights, num_filter, 1, f"{name}_se_conv2", no_bias=False)
    weights = mx.sym.Activation(data=weights, act_type="sigmoid", name=f"{name}_se_sigmoid")
    return mx.sym.broadcast_mul(body, weights)


def _unit_v1(data, num_filter, stride, dim_match, name, bottleneck, use_se, act_type):
    """Post-activation unit (original ResNet)."""
    if bottleneck:
        body = activation(batchnorm(conv(data, num_filter // 4, 1, f"{name}_conv1"), f"{name}_bn1"),
                          act_type, f"{name}_relu1")
        body = activation(batchnorm(conv(body, num_filter // 4, 3, f"{name}_conv2", stride=stride), f"{name}_bn2"),
                          act_type, f"{name}_relu2")
        body = batchnorm(conv(body, num_filter, 1, f"{name}_conv3"), f"{name}_bn3")
    else:
        body = activation(batchnorm(conv(data, num_filter, 3, f"{name}_conv1", stride=stride), f"{name}_bn1"),
                          act_type, f"{name}_relu1")
        body = batchnorm(conv(body, num_filter, 3, f"{name}_conv2"), f"{name}_bn2")
    if use_se:
        body = _squeeze_excite(body, num_filter, name, act_type)
    return activation(body + _shortcut(data, num_filter, stride, dim_match, name), act_type, f"{name}_relu3")


def _unit_v2(data, num_filter, stride, dim_match, name, bottleneck, use_se, act_type):
    """Pre-activation unit; the projection shortcut starts from the activated input."""
    pre = activation(batchnorm(data, f"{name}_bn1"), act_type, f"{name}_relu1")
    if bottleneck:
        body = conv(pre, num_filter // 4, 1, f"{name}_conv1")
        body = activation(batchnorm(body, f"{name}_bn2"), act_type, f"{name}_relu2")
        body = conv(body, num_filter // 4, 3, f"{name}_conv2", stride=stride)
        body = activation(batchnorm(body, f"{name}_bn3"), act_type, f"{name}_relu3")
        body = conv(body, num_filter, 1, f"{name}_conv3")
    else:
        body = conv(pre, num_filter, 3, f"{name}_conv1", stride=stride)
        body = activation(batchnorm(body, f"{name}_bn2"), act_type, f"{name}_relu2")
        body = conv(body, num_filter, 3, f"{name}_conv2")
    if use_se:
        body = _squeeze_excite(body, num_filter, name, act_type)
    shortcut = data if dim_match else conv(pre, num_filter, 1, f"{name}_conv1sc", stride=stride)
    return body + shortcut


def _unit_v3(data, num_filter, stride, dim_match, name, bottleneck, use_se, act_type, groups=1):
    """insightface IR unit; with ``groups > 1`` the ResNeXt-style bottleneck of width C/2."""
    body = batchnorm(data, f"{name}_bn1")
    if bottleneck or groups > 1:
        width = num_filter // 2 if groups > 1 else num_filter // 4
        body = conv(body, width, 1, f"{name}_conv1")
        body = activation(batchnorm(body, f"{name}_bn2"), act_type, f"{name}_relu1")
        body = conv(body, width, 3, f"{name}_conv2", stride=stride, num_group=groups)
        body = activation(batchnorm(body, f"{name}_bn3"), act_type, f"{name}_relu2")
        body = batchnorm(conv(body, num_filter, 1, f"{name}_conv3"), f"{name}_bn4")
    else:
        body = conv(body, num_filter, 3, f"{name}_conv1")
        body = activation(batchnorm(body, f"{name}_bn2"), act_type, f"{name}_relu1")
        body = batchnorm(conv(body, num_filter, 3, f"{name}_conv2", stride=stride), f"{name}_bn3")
    if use_se:
        body = _squeeze_excite(body, num_filter, name, act_type)
    return body + _shortcut(data, num_filter, stride, dim_match, name)


def _residual_unit(version_unit):
    if version_unit == 1:
        return _unit_v1
    if version_unit == 2:
        return _unit_v2
    if version_unit == 3:
        return _unit_v3
    if version_unit == "3x":
        return functools.partial(_unit_v3, groups=RESNEXT_GROUPS)
    raise ValueError(f"unknown version_unit {version_unit!r}; choose one of {', '.join(map(str, UNIT_VERSIONS))}")


def _stem(version_input, num_filter, act_type):
    """``data`` -> conv0 -> bn0 -> relu0; version 0: 7x7 stride 2, 1: 3x3 stride 1, 2: BN on data + 3x3."""
    data = mx.sym.Variable("data")
    if version_input == 2:
        data = batchnorm(data, "bn_data", fix_gamma=True)
    elif version_input in (0, 1):
        data = scale_input(mx.sym.identity(data=data, name="id"))
    else:
        raise ValueError(f"ResNet version_input must be 0, 1 or 2, not {version_input}")
    body = conv(data, num_filter, 7 if version_input == 0 else 3, "conv0", stride=2 if version_input == 0 else 1)
    return activation(batchnorm(body, "bn0"), act_type, "relu0")


def resnet_body(depth, version_input=1, version_unit=3, version_se=0, version_act="prelu"):
    """Stem and four residual stages; returns ``(last_unit, channels)``. Unknown depths raise ValueError."""
    if depth not in UNITS_PER_STAGE:
        raise ValueError(f"unsupported ResNet depth {depth}; choose one of "
                         f"{', '.join(map(str, sorted(UNITS_PER_STAGE)))}")
    bottleneck = depth >= 101
    filters = (64, 256, 512, 1024, 2048) if bottleneck else (64, 64, 128, 256, 512)
    unit = _residual_unit(version_unit)
    body = _stem(version_input, filters[0], version_act)
    for stage, num_units in enumerate(UNITS_PER_STAGE[depth], start=1):
        for index in range(1, num_units + 1):
            first = index == 1
            body = unit(body, filters[stage], 2 if first else 1, not first, f"stage{stage}_unit{index}",
                        bottleneck, bool(version_se), version_act)
    return body, filters[-1]


@register("resnet", prefix="r", variants=sorted(UNITS_PER_STAGE))
def resnet(depth=50, num_classes=config.FC1_SIZE, version_input=1, version_output="GAP", version_unit=3,
           version_se=0, version_act="prelu", multiplier=None, version_body=None):
    """ResNet ``r<depth>`` with head ``version_output``; returns the ``fc1`` symbol.

    ``multiplier`` and ``version_body`` are MobileNet options, accepted and ignored (the original ignored
    ``multiplier`` too).
    """
    body, channels = resnet_body(depth, version_input, version_unit, version_se, version_act)
    return get_fc1(body, num_classes, version_output, channels, act_type=version_act)
