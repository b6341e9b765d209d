"""MobileNet-v1 body with a width multiplier (``--network m1``), as in the shipped age/gender model (SPEC §3.1).

Layer names reproduce the original checkpoint: ``conv_<k>[_dw]_conv2d`` / ``_batchnorm`` / ``_relu``.
"""
import mxnet as mx

from agegender import config

from .heads import get_fc1
from .layers import MXNET_DEFAULT_BN_EPS, batchnorm, conv, scale_input
from .registry import register

# conv_2 .. conv_14: (stride of the depthwise conv, output width of the pointwise conv in base filters)
_BLOCKS = ((1, 2), (2, 4), (1, 4), (2, 8), (1, 8), (2, 16),
           (1, 16), (1, 16), (1, 16), (1, 16), (1, 16), (2, 32), (1, 32))


def _conv_block(data, name, num_filter, kernel, stride=1, num_group=1):
    """Convolution (no bias) -> BatchNorm (fixed gamma, eps 1e-3) -> ReLU."""
    body = conv(data, num_filter, kernel, f"{name}_conv2d", stride=stride, num_group=num_group)
    body = batchnorm(body, f"{name}_batchnorm", fix_gamma=True, eps=MXNET_DEFAULT_BN_EPS)
    return mx.sym.Activation(data=body, act_type="relu", name=f"{name}_relu")


def mobilenet_body(multiplier=1.0, version_input=1):
    """The 27 convolution blocks on the scaled ``data`` input; returns ``(last_block, channels)``.

    ``version_input`` 0 gives ``conv_1`` stride 2, 1 stride 1. Base width is ``int(32 * multiplier)``.
    """
    base = int(32 * multiplier)
    if base < 1:
        raise ValueError(f"multiplier {multiplier} leaves no filters (int(32 * multiplier) must be >= 1)")
    if version_input not in (0, 1):
        raise ValueError(f"MobileNet version_input must be 0 (stride-2 conv_1) or 1, not {version_input}")
    data = scale_input(mx.sym.Variable("data"))
    body = _conv_block(data, "conv_1", base, 3, stride=2 if version_input == 0 else 1)
    channels = base
    for index, (stride, width) in enumerate(_BLOCKS, start=2):
        body = _conv_block(body, f"conv_{index}_dw", channels, 3, stride=stride, num_group=channels)
        channels = width * base
        body = _conv_block(body, f"conv_{index}", channels, 1)
    return body, channels


@register("mobilenet", prefix="m", variants=(1,))
def mobilenet(variant=1, num_classes=config.FC1_SIZE, multiplier=1.0, version_input=1, version_output="GAP",
              version_act="prelu", version_unit=None, version_se=None):
    """MobileNet-v1 (``m1``) with head ``version_output``; returns the ``fc1`` symbol.

    ``version_unit`` and ``version_se`` are ResNet options, accepted and ignored like the original did.
    """
    body, channels = mobilenet_body(multiplier, version_input)
    return get_fc1(body, num_classes, version_output, channels, act_type=version_act)
