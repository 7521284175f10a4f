// roi_ops CUDA kernels: RoIAlign, RoIWarp and RoIPool, forward and backward, registered for the schema pair
// of ../roi_ops.cpp with TORCH_LIBRARY_IMPL(roi_ops, CUDA, m).
//
// The kernel bodies are the item functions of ../roi_kernels.h and the host side is the driver of
// ../roi_driver.h, both also compiled for the CPU emulation (../emulation/roi_ops_emulated.cpp) that CPU CI
// compares with the CPU kernels. This file only supplies the CUDA backend: each item type runs as a thin
// grid-stride `__global__` loop, and the atomic backward items accumulate with atomicAdd.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../roi_driver.h"

namespace roi_ops_cuda {
namespace {

using at::Tensor;

constexpr int kThreads = 256;

struct AtomicAdd {
  template <typename T>
  __device__ static void add(T* p, T v) {
    atomicAdd(p, v);  // float and double only (T is the opmath type)
  }
};

template <typename Item, typename Args>
__global__ void __launch_bounds__(kThreads) grid_stride(const Args a) {
  for (int64_t item = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; item < a.total;
       item += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    Item::run(a, item);
  }
}

struct CudaBackend {
  using Acc = AtomicAdd;

  struct Guard {
    explicit Guard(const Tensor& t) : guard(t.device()) {}
    c10::cuda::CUDAGuard guard;
  };

  static int64_t sm_count() { return at::cuda::getCurrentDeviceProperties()->multiProcessorCount; }

  template <typename Item, typename Args>
  static void launch(const Args& a) {
    const int64_t cap = sm_count() * 32;  // grid-stride loops beyond that
    const int64_t blocks = roi_driver::ceil_div(a.total, kThreads);
    grid_stride<Item><<<blocks < cap ? (blocks > 0 ? blocks : 1) : cap, kThreads, 0,
                        at::cuda::getCurrentCUDAStream()>>>(a);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
};

}  // namespace
}  // namespace roi_ops_cuda

TORCH_LIBRARY_IMPL(roi_ops, CUDA, m) {
  m.impl("multilevel_roi_forward", &roi_driver::forward<roi_ops_cuda::CudaBackend>);
  m.impl("multilevel_roi_backward", &roi_driver::backward<roi_ops_cuda::CudaBackend>);
}
