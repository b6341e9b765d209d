# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Greedy non-maximum suppression on the CPU."""
import numpy as np


def cpu_nms(dets, double thresh):
    """Indices of the boxes kept by greedy NMS, highest score first.

    ``dets`` is (N, >=5) ``[x1, y1, x2, y2, score, ...]``; only columns 0-4 are read. Boxes are visited by
    descending score (ties: lower index first); a box is suppressed when its IoU (inclusive pixel corners,
    ``w = x2 - x1 + 1``) with an already kept box is >= ``thresh``. Boxes that do not overlap have IoU 0.
    """
    dets = np.asarray(dets)
    if dets.ndim != 2 or dets.shape[1] < 5:
        raise ValueError(f"dets must have shape (N, >=5), got {dets.shape}")
    # float32 -> float64 is exact, and computing in float64 matches rcnn.processing.nms.py_nms bit for bit
    boxes = np.ascontiguousarray(dets[:, :5], dtype=np.float64)
    order_array = np.argsort(-boxes[:, 4], kind="stable")
    cdef double[:, ::1] b = boxes
    cdef Py_ssize_t[::1] order = order_array
    cdef Py_ssize_t n = b.shape[0], rank, other, i, j
    cdef unsigned char[::1] suppressed = np.zeros(n, dtype=np.uint8)
    cdef double[::1] area = np.empty(n, dtype=np.float64)
    cdef double iw, ih, inter, iou
    keep = []
    for i in range(n):
        area[i] = (b[i, 2] - b[i, 0] + 1.0) * (b[i, 3] - b[i, 1] + 1.0)
    for rank in range(n):
        i = order[rank]
        if suppressed[i]:
            continue
        keep.append(i)
        with nogil:
            for other in range(rank + 1, n):
                j = order[other]
                if suppressed[j]:
                    continue
                iw = max(0.0, min(b[i, 2], b[j, 2]) - max(b[i, 0], b[j, 0]) + 1.0)
                ih = max(0.0, min(b[i, 3], b[j, 3]) - max(b[i, 1], b[j, 1]) + 1.0)
                inter = iw * ih
                iou = inter / (area[i] + area[j] - inter) if inter > 0 else 0.0
                if iou >= thresh:
                    suppressed[j] = 1
    return keep
