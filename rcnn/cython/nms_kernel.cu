// CUDA NMS: one thread per box computes a 64-bit mask of the later boxes (in score order) that it suppresses
// within one block of 64 columns; the host then walks the boxes greedily, OR-ing in the masks of kept boxes.
// IoU is computed in double precision with the same operations as cpu_nms.pyx, so both keep the same boxes.
#include <cuda_runtime.h>

#include <cstdint>
#include <vector>

#include "gpu_nms.hpp"

namespace {

constexpr int kBoxesPerBlock = 64;  // one bit per box in a uint64_t mask word
constexpr int kFloatsPerBox = 5;    // x1, y1, x2, y2, score: the wrapper always passes exactly these

__device__ double box_iou(const float* a, const float* b) {
  const double iw = fmax(0.0, fmin((double)a[2], (double)b[2]) - fmax((double)a[0], (double)b[0]) + 1.0);
  const double ih = fmax(0.0, fmin((double)a[3], (double)b[3]) - fmax((double)a[1], (double)b[1]) + 1.0);
  const double inter = iw * ih;
  if (!(inter > 0)) return 0.0;
  const double area_a = ((double)a[2] - (double)a[0] + 1.0) * ((double)a[3] - (double)a[1] + 1.0);
  const double area_b = ((double)b[2] - (double)b[0] + 1.0) * ((double)b[3] - (double)b[1] + 1.0);
  return inter / (area_a + area_b - inter);
}

// Block (col_block, row_block): bit c of mask[row * gridDim.x + col_block] is set when box
// col_block * 64 + c comes after box `row` and overlaps it with IoU >= thresh.
__global__ void suppression_mask_kernel(int num_boxes, double thresh, const float* boxes, uint64_t* mask) {
  const int row_block = blockIdx.y;
  const int col_block = blockIdx.x;
  if (row_block > col_block) return;  // a box can only suppress boxes later in score order
  const int rows = min(num_boxes - row_block * kBoxesPerBlock, kBoxesPerBlock);
  const int cols = min(num_boxes - col_block * kBoxesPerBlock, kBoxesPerBlock);

  __shared__ float col_boxes[kBoxesPerBlock * kFloatsPerBox];
  if (threadIdx.x < cols) {
    const float* src = boxes + (col_block * kBoxesPerBlock + threadIdx.x) * kFloatsPerBox;
    for (int f = 0; f < kFloatsPerBox; ++f) col_boxes[threadIdx.x * kFloatsPerBox + f] = src[f];
  }
  __syncthreads();
  if (threadIdx.x >= rows) return;

  const int row = row_block * kBoxesPerBlock + threadIdx.x;
  const float* row_box = boxes + row * kFloatsPerBox;
  const int first_col = (row_block == col_block) ? threadIdx.x + 1 : 0;
  uint64_t bits = 0;
  for (int c = first_col; c < cols; ++c) {
    if (box_iou(row_box, col_boxes + c * kFloatsPerBox) >= thresh) bits |= 1ULL << c;
  }
  mask[(size_t)row * gridDim.x + col_block] = bits;
}

// Device allocation freed on scope exit, so every error path releases memory.
struct DeviceBuffer {
  void* ptr = nullptr;
  ~DeviceBuffer() {
    if (ptr) cudaFree(ptr);
  }
};

}  // namespace

int nms_cuda(int* keep, int* num_kept, const float* boxes, int num_boxes, double thresh, int device_id) {
  *num_kept = 0;
  if (num_boxes <= 0) return 0;
  const int num_blocks = (num_boxes + kBoxesPerBlock - 1) / kBoxesPerBlock;
  const size_t boxes_bytes = sizeof(float) * kFloatsPerBox * num_boxes;
  const size_t mask_words = (size_t)num_boxes * num_blocks;

  cudaError_t status = cudaSetDevice(device_id);
  if (status != cudaSuccess) return status;
  DeviceBuffer boxes_dev, mask_dev;
  if ((status = cudaMalloc(&boxes_dev.ptr, boxes_bytes)) != cudaSuccess) return status;
  if ((status = cudaMalloc(&mask_dev.ptr, sizeof(uint64_t) * mask_words)) != cudaSuccess) return status;
  if ((status = cudaMemcpy(boxes_dev.ptr, boxes, boxes_bytes, cudaMemcpyHostToDevice)) != cudaSuccess) return status;

  const dim3 grid(num_blocks, num_blocks);
  suppression_mask_kernel<<<grid, kBoxesPerBlock>>>(num_boxes, thresh, static_cast<const float*>(boxes_dev.ptr),
                                                     static_cast<uint64_t*>(mask_dev.ptr));
  if ((status = cudaGetLastError()) != cudaSuccess) return status;

  std::vector<uint64_t> mask(mask_words);
  status = cudaMemcpy(mask.data(), mask_dev.ptr, sizeof(uint64_t) * mask_words, cudaMemcpyDeviceToHost);
  if (status != cudaSuccess) return status;

  std::vector<uint64_t> removed(num_blocks, 0);
  for (int i = 0; i < num_boxes; ++i) {
    const int block = i / kBoxesPerBlock;
    if (removed[block] & (1ULL << (i % kBoxesPerBlock))) continue;
    keep[(*num_kept)++] = i;
    const uint64_t* row_mask = mask.data() + (size_t)i * num_blocks;
    for (int b = block; b < num_blocks; ++b) removed[b] |= row_mask[b];  // only blocks >= block were written
  }
  return 0;
}

const char* nms_cuda_error(int status) { return cudaGetErrorString(static_cast<cudaError_t>(status)); }

int nms_cuda_device_count() {
  int count = 0;
  return cudaGetDeviceCount(&count) == cudaSuccess ? count : 0;
}
