# distutils: language = c++
# cython: language_level=3, boundscheck=False, wraparound=False
"""Greedy non-maximum suppression on a CUDA device (same result as cpu_nms for float32 boxes)."""
import numpy as np

cdef extern from "gpu_nms.hpp":
    int nms_cuda(int* keep, int* num_kept, const float* boxes, int num_boxes, double thresh, int device_id) nogil
    const char* nms_cuda_error(int status)
    int nms_cuda_device_count()


def cuda_device_count():
    """Number of usable CUDA devices (0 without a driver or device)."""
    return nms_cuda_device_count()


def gpu_nms(dets, double thresh, int device_id=0):
    """Indices of the boxes kept by greedy NMS on CUDA device ``device_id``, highest score first.

    Same contract as ``cpu_nms.cpu_nms``: ``dets`` is (N, >=5) and only columns 0-4 are read. The kernel is
    always given a contiguous (N, 5) float32 copy, so wider rows (e.g. boxes followed by landmarks) are safe.
    Raises RuntimeError on a CUDA error.
    """
    dets = np.asarray(dets)
    if dets.ndim != 2 or dets.shape[1] < 5:
        raise ValueError(f"dets must have shape (N, >=5), got {dets.shape}")
    order = np.argsort(-dets[:, 4].astype(np.float64), kind="stable")
    cdef float[:, ::1] boxes = np.ascontiguousarray(dets[order, :5], dtype=np.float32)
    cdef int num_boxes = boxes.shape[0]
    if num_boxes == 0:
        return []
    cdef int[::1] keep = np.empty(num_boxes, dtype=np.intc)
    cdef int num_kept = 0, status
    with nogil:
        status = nms_cuda(&keep[0], &num_kept, &boxes[0, 0], num_boxes, thresh, device_id)
    if status != 0:
        raise RuntimeError(f"gpu_nms on device {device_id} failed: {nms_cuda_error(status).decode()}")
    return [int(order[keep[k]]) for k in range(num_kept)]
