"""Non-maximum suppression: a NumPy reference and wrappers choosing the compiled CPU or CUDA version.

All versions share one contract: ``nms(dets) -> list`` of kept row indices, highest score first, where
``dets`` is (N, >=5) ``[x1, y1, x2, y2, score, ...]`` (only columns 0-4 are read); boxes are visited by
descending score, ties broken by lower index; a box is suppressed when its IoU with an already kept box is
>= ``thresh`` (inclusive pixel corners, ``w = x2 - x1 + 1``); boxes that do not overlap have IoU 0.
"""
import logging

import numpy as np

logger = logging.getLogger(__name__)

BUILD_HINT = "run `make` in the project root to build the rcnn/cython extensions"


def py_nms(dets, thresh):
    """Greedy NMS in NumPy; keeps exactly the boxes ``rcnn.cython.cpu_nms.cpu_nms`` keeps."""
    dets = np.asarray(dets)
    if dets.ndim != 2 or dets.shape[1] < 5:
        raise ValueError(f"dets must have shape (N, >=5), got {dets.shape}")
    x1, y1, x2, y2, scores = np.asarray(dets[:, :5], dtype=np.float64).T
    areas = (x2 - x1 + 1.0) * (y2 - y1 + 1.0)
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        best, rest = order[0], order[1:]
        keep.append(int(best))
        iw = np.maximum(0.0, np.minimum(x2[best], x2[rest]) - np.maximum(x1[best], x1[rest]) + 1.0)
        ih = np.maximum(0.0, np.minimum(y2[best], y2[rest]) - np.maximum(y1[best], y1[rest]) + 1.0)
        inter = iw * ih
        iou = np.zeros_like(inter)
        np.divide(inter, areas[best] + areas[rest] - inter, out=iou, where=inter > 0)
        order = rest[iou < thresh]
    return keep


def py_nms_wrapper(thresh):
    """Return ``nms(dets)`` running :func:`py_nms` with ``thresh``."""
    def nms(dets):
        return py_nms(dets, thresh)
    return nms


def cpu_nms_wrapper(thresh):
    """Return ``nms(dets)`` running the compiled CPU NMS; raises ImportError if it is not built."""
    try:
        from rcnn.cython.cpu_nms import cpu_nms
    except ImportError as error:
        raise ImportError(f"rcnn.cython.cpu_nms is not built ({error}); {BUILD_HINT}") from error

    def nms(dets):
        return cpu_nms(dets, thresh)
    return nms


def gpu_nms_wrapper(thresh, device_id=0):
    """Return ``nms(dets)`` running CUDA NMS on ``device_id``.

    Falls back to :func:`cpu_nms_wrapper` (with a log message) when ``gpu_nms`` was not built or the device
    does not exist (no driver, no GPU, or ``device_id`` out of range).
    """
    try:
        from rcnn.cython.gpu_nms import cuda_device_count, gpu_nms
    except ImportError:
        logger.info("gpu_nms is not built; using cpu_nms")
        return cpu_nms_wrapper(thresh)
    num_devices = cuda_device_count()
    if not 0 <= device_id < num_devices:
        logger.info("CUDA device %d not available (%d found); using cpu_nms", device_id, num_devices)
        return cpu_nms_wrapper(thresh)

    def nms(dets):
        return gpu_nms(dets, thresh, device_id)
    return nms
