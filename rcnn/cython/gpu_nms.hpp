// Host entry points of nms_kernel.cu, called by gpu_nms.pyx.
#pragma once

// Greedy NMS of num_boxes boxes already sorted by descending score; boxes is a C-contiguous (num_boxes, 5)
// float32 array [x1, y1, x2, y2, score] in host memory. Writes the kept positions (in that sorted order) to
// keep[0 .. *num_kept). Returns 0 on success, otherwise a CUDA error code (see nms_cuda_error).
int nms_cuda(int* keep, int* num_kept, const float* boxes, int num_boxes, double thresh, int device_id);

// Message for a non-zero status returned by nms_cuda.
const char* nms_cuda_error(int status);

// Number of usable CUDA devices; 0 when there is no driver or no device.
int nms_cuda_device_count();
