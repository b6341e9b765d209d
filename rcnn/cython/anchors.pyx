# cython: language_level=3, boundscheck=False, wraparound=False
"""Anchors of every cell of a feature map."""
import numpy as np


def anchors_cython(int height, int width, int stride, base_anchors):
    """Shift the (A, 4) base anchors to every cell of a ``height`` x ``width`` map -> (height, width, A, 4) float32.

    Anchor ``[r, c, k]`` is ``base_anchors[k] + (c * stride, r * stride, c * stride, r * stride)``.
    """
    base_anchors = np.asarray(base_anchors)
    if base_anchors.ndim != 2 or base_anchors.shape[1] != 4:
        raise ValueError(f"base_anchors must have shape (A, 4), got {base_anchors.shape}")
    if height < 0 or width < 0:
        raise ValueError(f"feature map size must be non-negative, got {height}x{width}")
    cdef float[:, ::1] base = np.ascontiguousarray(base_anchors, dtype=np.float32)
    cdef Py_ssize_t num_anchors = base.shape[0], r, c, k
    plane = np.empty((height, width, num_anchors, 4), dtype=np.float32)
    cdef float[:, :, :, ::1] out = plane
    cdef float shift_x, shift_y
    with nogil:
        for r in range(height):
            shift_y = <float>(r * stride)
            for c in range(width):
                shift_x = <float>(c * stride)
                for k in range(num_anchors):
                    out[r, c, k, 0] = base[k, 0] + shift_x
                    out[r, c, k, 1] = base[k, 1] + shift_y
                    out[r, c, k, 2] = base[k, 2] + shift_x
                    out[r, c, k, 3] = base[k, 3] + shift_y
    return plane
