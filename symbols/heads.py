"""Output heads: from a body's last feature map (C x 7 x 7 for 112 x 112 input) to the ``fc1`` layer.

``version_output`` selects one of the original's heads. BatchNorms here use eps 2e-5, momentum 0.9; the last
layer of every head is named ``fc1`` so that ``fc1_output`` is always the network output.

=========  ===================================================================================
``Z``      BN ``bn1`` -> Dropout 0.4 (``fc1``); no FC: the output is the C x 7 x 7 feature map
``E``      BN ``bn1`` -> Dropout 0.4 -> FC ``pre_fc1`` -> BN ``fc1`` (fixed gamma)
``GAP``    BN ``bn1`` -> act ``relu1`` -> global average pool ``pool1`` -> FC ``pre_fc1`` -> BN ``fc1``
``GNAP``   (1x1 conv ``convx`` to num_classes if wider than C) -> BN ``bn6f`` -> spatial-norm attention ->
           global average pool -> (BN ``bn6w`` -> FC ``pre_fc1`` if num_classes < C) -> BN ``fc1``
``GDC``    7x7 depthwise linear conv ``conv_6dw7_7`` (+BN) -> FC ``pre_fc1`` -> BN ``fc1``
``F``      BN ``bn1`` -> Dropout 0.4 -> FC ``fc1``
``G``      BN ``bn1`` -> FC ``fc1``
``H``      FC ``fc1``
``I``      BN ``bn1`` -> FC ``pre_fc1`` -> BN ``fc1``
``J``      FC ``pre_fc1`` -> BN ``fc1``
``A..D``   BN ``bn1`` -> act ``relu1`` -> global average pool -> flatten, then A: nothing (output C values);
           B: FC ``fc1``; C: FC ``pre_fc1`` -> BN ``fc1``; D: FC ``pre_fc1`` -> BN ``fc1_bn`` -> act ``fc1``.
           A second letter ``X`` (``AX`` .. ``DX``) adds Dropout 0.2 after the flatten.
=========  ===================================================================================
"""
import mxnet as mx

from .layers import activation, batchnorm, conv

HEADS = ("Z", "E", "GAP", "GNAP", "GDC", "F", "G", "H", "I", "J",
         "A", "B", "C", "D", "AX", "BX", "CX", "DX")


def get_fc1(body, num_classes, version_output, channels, act_type="prelu"):
    """Put head ``version_output`` on ``body`` (``channels`` feature maps of 7 x 7); returns the ``fc1`` symbol."""
    head = str(version_output).upper()
    if head not in HEADS:
        raise ValueError(f"unknown output head '{version_output}'; choose one of {', '.join(HEADS)}")
    if head == "Z":
        return mx.sym.Dropout(data=batchnorm(body, "bn1"), p=0.4, name="fc1")
    if head in ("E", "F"):
        body = mx.sym.Dropout(data=batchnorm(body, "bn1"), p=0.4)
        if head == "F":
            return _fc(body, num_classes, "fc1")
        return _fc_bn(body, num_classes)
    if head == "GAP":
        return _fc_bn(_bn_act_pool(body, act_type), num_classes)
    if head == "GNAP":
        return _gnap(body, num_classes, channels, act_type)
    if head == "GDC":
        body = conv(body, channels, 7, "conv_6dw7_7_conv2d", num_group=channels)
        return _fc_bn(batchnorm(body, "conv_6dw7_7_batchnorm"), num_classes)
    if head == "G":
        return _fc(batchnorm(body, "bn1"), num_classes, "fc1")
    if head == "H":
        return _fc(body, num_classes, "fc1")
    if head == "I":
        return _fc_bn(batchnorm(body, "bn1"), num_classes)
    if head == "J":
        return _fc_bn(body, num_classes)
    return _pooled_family(body, num_classes, head, act_type)


def _fc(data, num_classes, name):
    return mx.sym.FullyConnected(data=data, num_hidden=num_classes, name=name)


def _fc_bn(data, num_classes):
    """FC ``pre_fc1`` then BN ``fc1`` with fixed gamma: the layout of the shipped model's output."""
    return batchnorm(_fc(data, num_classes, "pre_fc1"), "fc1", fix_gamma=True)


def _bn_act_pool(body, act_type):
    body = activation(batchnorm(body, "bn1"), act_type, "relu1")
    # global_pool ignores the kernel; it is given because older MXNet required one
    body = mx.sym.Pooling(data=body, global_pool=True, kernel=(7, 7), pool_type="avg", name="pool1")
    return mx.sym.Flatten(data=body)


def _pooled_family(body, num_classes, head, act_type):
    """Heads A, B, C, D (and their X variants with dropout)."""
    kind, with_dropout = head[0], head.endswith("X")
    body = _bn_act_pool(body, act_type)
    if with_dropout:
        body = mx.sym.Dropout(data=body, p=0.2)
    if kind == "A":
        return mx.sym.identity(data=body, name="fc1")
    if kind == "B":
        return _fc(body, num_classes, "fc1")
    if kind == "C":
        return _fc_bn(body, num_classes)
    body = batchnorm(_fc(body, num_classes, "pre_fc1"), "fc1_bn", fix_gamma=True)
    return activation(body, act_type, "fc1")


def _gnap(body, num_classes, channels, act_type):
    """Global norm-aware pooling (mobilefacenet++): weight each position by mean(norm) / its feature norm."""
    if num_classes > channels:
        body = conv(body, num_classes, 1, "convx")
        body = activation(batchnorm(body, "convx_bn"), act_type, "convx_relu")
        channels = num_classes
    body = batchnorm(body, "bn6f", fix_gamma=True)
    norm = mx.sym.sqrt(mx.sym.sum(body * body, axis=1, keepdims=True))
    body = mx.sym.broadcast_mul(body, mx.sym.broadcast_div(mx.sym.mean(norm), norm))
    body = mx.sym.Flatten(data=mx.sym.Pooling(data=body, global_pool=True, kernel=(7, 7), pool_type="avg"))
    if num_classes < channels:
        body = _fc(batchnorm(body, "bn6w", fix_gamma=True), num_classes, "pre_fc1")
    return batchnorm(body, "fc1", fix_gamma=True)
