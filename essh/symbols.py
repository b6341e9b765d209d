"""ESSH-family detector graphs as MXNet symbols.

Both networks end in the same deploy layout: 9 outputs, ``[cls, bbox, landmark]`` for strides
32, 16, 8, with A = 2 anchors per position. ``cls`` has 2A channels (A background, then A face
probabilities, softmax over each pair), ``bbox`` 4A (dx, dy, dw, dh per anchor) and ``landmark``
10A (five interleaved x, y per anchor).
"""
import mxnet as mx

from .layout import ESSH_OUTPUT_PREFIX, NUM_ANCHORS, RETINAFACE_OUTPUT_PREFIX, STRIDES  # noqa: F401  (re-exported)

LEAKY_SLOPE = 0.1


def _conv(data, name, num_filter, kernel=3, stride=1, num_group=1, act=None):
    """Square convolution with bias and 'same' padding, followed by ``act`` ('relu', 'leaky' or None)."""
    pad = kernel // 2
    out = mx.sym.Convolution(data=data, num_filter=num_filter, kernel=(kernel, kernel), stride=(stride, stride),
                             pad=(pad, pad), num_group=num_group, name=name)
    if act == "relu":
        out = mx.sym.Activation(data=out, act_type="relu", name=name + "_relu")
    elif act == "leaky":
        out = mx.sym.LeakyReLU(data=out, act_type="leaky", slope=LEAKY_SLOPE, name=name + "_leaky")
    return out


def detection_module(data, name, conv_channels, context_channels, context_act):
    """SSH detection module: a 3x3 conv beside a context branch of stacked 3x3 convs (5x5 and 7x7 fields).

    The three branches (``conv_channels``, ``context_channels``, ``context_channels``) are concatenated
    and passed through ReLU.
    """
    conv3x3 = _conv(data, f"{name}_conv3x3", conv_channels)
    reduced = _conv(data, f"{name}_context_conv1", context_channels, act=context_act)
    conv5x5 = _conv(reduced, f"{name}_context_conv2", context_channels)
    conv7x7 = _conv(reduced, f"{name}_context_conv3_1", context_channels, act=context_act)
    conv7x7 = _conv(conv7x7, f"{name}_context_conv3_2", context_channels)
    concat = mx.sym.concat(conv3x3, conv5x5, conv7x7, dim=1, name=f"{name}_concat")
    return mx.sym.Activation(data=concat, act_type="relu", name=f"{name}_relu")


def _heads(features, prefix, landmark_name):
    """The 9 deploy outputs from ``features`` = {stride: feature map}, in the original's order (strides 32, 16, 8)."""
    outputs = []
    for stride in STRIDES:
        feat = features[stride]
        score = mx.sym.Convolution(data=feat, num_filter=2 * NUM_ANCHORS, kernel=(1, 1),
                                   name=f"{prefix}_cls_score_stride{stride}")
        # Softmax over (background, face) of each anchor: channels [bg_0..bg_A-1, face_0..face_A-1].
        pairs = mx.sym.Reshape(data=score, shape=(0, 2, -1, 0), name=f"{prefix}_cls_score_reshape_stride{stride}")
        prob = mx.sym.softmax(data=pairs, axis=1, name=f"{prefix}_cls_prob_stride{stride}")
        prob = mx.sym.Reshape(data=prob, shape=(0, 2 * NUM_ANCHORS, -1, 0),
                              name=f"{prefix}_cls_prob_reshape_stride{stride}")
        bbox = mx.sym.Convolution(data=feat, num_filter=4 * NUM_ANCHORS, kernel=(1, 1),
                                  name=f"{prefix}_bbox_pred_stride{stride}")
        landmark = mx.sym.Convolution(data=feat, num_filter=10 * NUM_ANCHORS, kernel=(1, 1),
                                      name=f"{prefix}_{landmark_name}_pred_stride{stride}")
        outputs += [prob, bbox, landmark]
    return mx.sym.Group(outputs)


def essh_vgg16():
    """The original ESSH deploy graph: VGG-16 backbone, SSH modules M1-M3, landmark heads.

    Input ``data``: N x 3 x H x W, RGB with the VGG means subtracted (no normalisation in the graph).
    """
    data = mx.sym.Variable("data")
    body = data
    stages = ((1, 64, 2), (2, 128, 2), (3, 256, 3), (4, 512, 3), (5, 512, 3))
    taps = {}
    for stage, channels, repeats in stages:
        if stage > 1:
            body = mx.sym.Pooling(data=body, kernel=(2, 2), stride=(2, 2), pool_type="max", name=f"pool{stage - 1}")
        for i in range(1, repeats + 1):
            body = _conv(body, f"conv{stage}_{i}", channels)
            body = mx.sym.Activation(data=body, act_type="relu", name=f"relu{stage}_{i}")
        taps[stage] = body
    relu4_3, relu5_3 = taps[4], taps[5]
    pool5 = mx.sym.Pooling(data=relu5_3, kernel=(2, 2), stride=(2, 2), pool_type="max", name="pool5")

    m1_red = _conv(relu4_3, "ssh_m1_red_conv", 128, kernel=1, act="relu")
    m2_red = _conv(relu5_3, "ssh_m2_red_conv", 128, kernel=1, act="relu")
    # Frozen bilinear x2 upsampling (one 4x4 kernel per channel), as trained.
    m2_up = mx.sym.Deconvolution(data=m2_red, num_filter=128, kernel=(4, 4), stride=(2, 2), pad=(1, 1),
                                 num_group=128, no_bias=True, name="ssh_m2_red_upsampling",
                                 attr={"__lr_mult__": "0.0"})
    m1_red = mx.sym.slice_like(m1_red, m2_up, axes=(2, 3), name="ssh_m1_red_crop")
    m1 = _conv(m1_red + m2_up, "ssh_m1_conv", 128, act="relu")

    features = {
        8: detection_module(m1, "ssh_m1_det", 128, 64, "relu"),
        16: detection_module(relu5_3, "ssh_m2_det", 256, 128, "relu"),
        32: detection_module(pool5, "ssh_m3_det", 256, 128, "relu"),
    }
    return _heads(features, ESSH_OUTPUT_PREFIX, "kpoint")


# MobileNet-0.25 body: (output channels, stride) of each depthwise-separable block after the first conv.
MNET025_BLOCKS = ((16, 1), (32, 2), (32, 1), (64, 2), (64, 1),              # -> stride 8
                  (128, 2), (128, 1), (128, 1), (128, 1), (128, 1), (128, 1),  # -> stride 16
                  (256, 2), (256, 1))                                     # -> stride 32
MNET025_STEM = 8
FPN_CHANNELS = 64


def mnet025_body(data):
    """MobileNet-0.25 backbone (BatchNorm folded into the convolutions, LeakyReLU 0.1).

    Returns {stride: feature map} for strides 8, 16, 32. Convolutions are named ``mnet_conv{i}``,
    i = 0 (stem), then a depthwise and a pointwise conv per block.
    """
    body = _conv(data, "mnet_conv0", MNET025_STEM, stride=2, act="leaky")
    channels, stride, index = MNET025_STEM, 2, 1
    taps = {}
    for out_channels, block_stride in MNET025_BLOCKS:
        body = _conv(body, f"mnet_conv{index}", channels, stride=block_stride, num_group=channels, act="leaky")
        body = _conv(body, f"mnet_conv{index + 1}", out_channels, kernel=1, act="leaky")
        index += 2
        channels, stride = out_channels, stride * block_stride
        taps[stride] = body
    return {s: taps[s] for s in (8, 16, 32)}


def retinaface_mnet025():
    """MobileNet-0.25 RetinaFace-style ESSH: FPN (64 ch, nearest x2 upsampling) + SSH modules + heads.

    The layout of Pytorch_Retinaface's ``mobilenet0.25`` network, exported with folded BatchNorms.
    Input ``data``: N x 3 x H x W as the checkpoint's family says (BGR minus means for the converted
    default weights). Outputs use RetinaFace names (``face_rpn_*``).
    """
    data = mx.sym.Variable("data")
    taps = mnet025_body(data)
    lateral = {s: _conv(taps[s], f"fpn_lateral_stride{s}", FPN_CHANNELS, kernel=1, act="leaky") for s in (8, 16, 32)}
    merged = {32: lateral[32]}
    for stride in (16, 8):
        coarser = mx.sym.UpSampling(merged[stride * 2], scale=2, sample_type="nearest",
                                    name=f"fpn_upsample_stride{stride}")
        coarser = mx.sym.slice_like(coarser, lateral[stride], axes=(2, 3), name=f"fpn_crop_stride{stride}")
        merged[stride] = _conv(lateral[stride] + coarser, f"fpn_merge_stride{stride}", FPN_CHANNELS, act="leaky")
    features = {s: detection_module(merged[s], f"ssh_stride{s}", FPN_CHANNELS // 2, FPN_CHANNELS // 4, "leaky")
                for s in STRIDES}
    return _heads(features, RETINAFACE_OUTPUT_PREFIX, "landmark")


NETWORKS = {"essh-vgg16": essh_vgg16, "retinaface-mnet025": retinaface_mnet025}


def get_symbol(network):
    """Deploy symbol of ``network`` ('essh-vgg16' or 'retinaface-mnet025')."""
    if network not in NETWORKS:
        raise ValueError(f"unknown ESSH network '{network}'; choose one of {', '.join(NETWORKS)}")
    return NETWORKS[network]()
