"""MobileNet-v1 body with a width multiplier (``--network m1``), as in the shipped age/gender model.

Layer names reproduce the original checkpoint: ``conv_<k>[_dw]_conv2d`` / ``_batchnorm`` / ``_relu``.

Two body layouts (``version_body``):

* ``"original"``: the original's blocks: convolution -> BatchNorm with fixed gamma -> ReLU, input scaled
  as ``(x - 127.5) / 128``.
* ``"retinaface"``: the layout of the RetinaFace MobileNet-0.25 backbone, so that its face-trained weights
  load one to one (:mod:`symbols.pretrained`): BatchNorm with a learned gamma, LeakyReLU with slope 0.1
  (``_leaky``), input minus the detector's per-channel means (its BGR means (104, 117, 123), here in RGB).
"""
import mxnet as mx

from agegender import config

from .heads import get_fc1
from .layers import MXNET_DEFAULT_BN_EPS, batchnorm, conv, scale_input, subtract_channel_means
from .registry import register

# conv_2 .. conv_14: (stride of the depthwise conv, output width of the pointwise conv in base filters)
_BLOCKS = ((1, 2), (2, 4), (1, 4), (2, 8), (1, 8), (2, 16),
           (1, 16), (1, 16), (1, 16), (1, 16), (1, 16), (2, 32), (1, 32))

BODIES = ("original", "retinaface")
RETINAFACE_RGB_MEANS = (123.0, 117.0, 104.0)
RETINAFACE_LEAKY_SLOPE = 0.1


def block_names():
    """The 27 convolution blocks in network order: ``conv_1``, ``conv_2_dw``, ``conv_2``, … ``conv_14``."""
    names = ["conv_1"]
    for index in range(2, len(_BLOCKS) + 2):
        names += [f"conv_{index}_dw", f"conv_{index}"]
    return names


def _conv_block(data, name, num_filter, kernel, stride=1, num_group=1, body="original"):
    """Convolution (no bias) -> BatchNorm (eps 1e-3) -> ReLU, or the RetinaFace layout's variant of it."""
    out = conv(data, num_filter, kernel, f"{name}_conv2d", stride=stride, num_group=num_group)
    if body == "retinaface":
        out = batchnorm(out, f"{name}_batchnorm", fix_gamma=False, eps=MXNET_DEFAULT_BN_EPS)
        return mx.sym.LeakyReLU(data=out, act_type="leaky", slope=RETINAFACE_LEAKY_SLOPE, name=f"{name}_leaky")
    out = batchnorm(out, f"{name}_batchnorm", fix_gamma=True, eps=MXNET_DEFAULT_BN_EPS)
    return mx.sym.Activation(data=out, act_type="relu", name=f"{name}_relu")


def mobilenet_body(multiplier=1.0, version_input=1, version_body="original"):
    """The 27 convolution blocks on the normalised ``data`` input; returns ``(last_block, channels)``.

    ``version_input`` 0 gives ``conv_1`` stride 2, 1 stride 1. Base width is ``int(32 * multiplier)``.
    ``version_body`` is one of :data:`BODIES` (module docstring).
    """
    base = int(32 * multiplier)
    if base < 1:
        raise ValueError(f"multiplier {multiplier} leaves no filters (int(32 * multiplier) must be >= 1)")
    if version_input not in (0, 1):
        raise ValueError(f"MobileNet version_input must be 0 (stride-2 conv_1) or 1, not {version_input}")
    if version_body not in BODIES:
        raise ValueError(f"unknown MobileNet body '{version_body}'; choose one of {', '.join(BODIES)}")
    data = mx.sym.Variable("data")
    data = (subtract_channel_means(data, RETINAFACE_RGB_MEANS) if version_body == "retinaface"
            else scale_input(data))
    body = _conv_block(data, "conv_1", base, 3, stride=2 if version_input == 0 else 1, body=version_body)
    channels = base
    for index, (stride, width) in enumerate(_BLOCKS, start=2):
        body = _conv_block(body, f"conv_{index}_dw", channels, 3, stride=stride, num_group=channels,
                           body=version_body)
        channels = width * base
        body = _conv_block(body, f"conv_{index}", channels, 1, body=version_body)
    return body, channels


@register("mobilenet", prefix="m", variants=(1,))
def mobilenet(variant=1, num_classes=config.FC1_SIZE, multiplier=1.0, version_input=1, version_output="GAP",
              version_act="prelu", version_unit=None, version_se=None, version_body="original"):
    """MobileNet-v1 (``m1``) with head ``version_output``; returns the ``fc1`` symbol.

    ``version_unit`` and ``version_se`` are ResNet options, accepted and ignored like the original did.
    """
    body, channels = mobilenet_body(multiplier, version_input, version_body)
    return get_fc1(body, num_classes, version_output, channels, act_type=version_act)
