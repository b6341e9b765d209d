# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Pairwise intersection-over-union of two sets of boxes."""
import numpy as np


def _corners(boxes, name):
    """The first four columns of a 2-D array, as a C-contiguous float64 array."""
    boxes = np.asarray(boxes)
    if boxes.ndim != 2 or boxes.shape[1] < 4:
        raise ValueError(f"{name} must have shape (N, >=4), got {boxes.shape}")
    return np.ascontiguousarray(boxes[:, :4], dtype=np.float64)


def bbox_overlaps_cython(boxes, query_boxes):
    """IoU of every box in ``boxes`` (N, 4) with every box in ``query_boxes`` (K, 4) -> (N, K) float64.

    Boxes are ``[x1, y1, x2, y2]`` (only the first four columns are read) with inclusive pixel corners, so a
    box is ``x2 - x1 + 1`` wide. Boxes that do not overlap (including boxes of zero or negative size) have IoU 0.
    """
    cdef double[:, ::1] b = _corners(boxes, "boxes")
    cdef double[:, ::1] q = _corners(query_boxes, "query_boxes")
    cdef Py_ssize_t n = b.shape[0], k = q.shape[0], i, j
    overlaps = np.zeros((n, k), dtype=np.float64)
    cdef double[:, ::1] out = overlaps
    cdef double query_area, iw, ih, inter
    with nogil:
        for j in range(k):
            query_area = (q[j, 2] - q[j, 0] + 1.0) * (q[j, 3] - q[j, 1] + 1.0)
            for i in range(n):
                iw = min(b[i, 2], q[j, 2]) - max(b[i, 0], q[j, 0]) + 1.0
                if iw <= 0:
                    continue
                ih = min(b[i, 3], q[j, 3]) - max(b[i, 1], q[j, 1]) + 1.0
                if ih <= 0:
                    continue
                inter = iw * ih
                out[i, j] = inter / ((b[i, 2] - b[i, 0] + 1.0) * (b[i, 3] - b[i, 1] + 1.0) + query_area - inter)
    return overlaps
