// CPU emulation of the CUDA kernels, for tests: torch.ops.roi_ops_emulated.multilevel_roi_forward / _backward,
// the schema pair of roi_ops (../schema.h) on CPU tensors.
//
// It runs the CUDA path's own code: the host driver (../roi_driver.h) and the kernels' item functions
// (../roi_kernels.h), each launch executed serially, item 0 first, with `+=` for atomicAdd. What a GPU adds
// to that is the parallel schedule (atomics reorder float sums; gather items race only if the ownership
// partition is wrong, which the serial run shows as double-counted or missing gradient) and the hardware:
// a misaligned vector load raises here as it faults there. The deterministic path sizes its column chunks
// for kEmulatedSms multiprocessors. Built by ops.build.load_emulation(), separately from the op library.
#include <torch/library.h>

#include <string>

#include "../roi_driver.h"
#include "../schema.h"

namespace roi_ops_emulated {
namespace {

using at::Tensor;

constexpr int64_t kEmulatedSms = 132;  // an H100 SXM

struct SerialAdd {
  template <typename T>
  static void add(T* p, T v) {
    *p += v;
  }
};

struct EmulatedBackend {
  using Acc = SerialAdd;

  struct Guard {
    explicit Guard(const Tensor&) {}
  };

  static int64_t sm_count() { return kEmulatedSms; }

  template <typename Item, typename Args>
  static void launch(const Args& a) {
    for (int64_t item = 0; item < a.total; ++item) Item::run(a, item);
  }
};

}  // namespace
}  // namespace roi_ops_emulated

TORCH_LIBRARY(roi_ops_emulated, m) {
  m.def((std::string("multilevel_roi_forward") + roi_ops::kForwardSchema).c_str());
  m.def((std::string("multilevel_roi_backward") + roi_ops::kBackwardSchema).c_str());
}

TORCH_LIBRARY_IMPL(roi_ops_emulated, CPU, m) {
  m.impl("multilevel_roi_forward", &roi_driver::forward<roi_ops_emulated::EmulatedBackend>);
  m.impl("multilevel_roi_backward", &roi_driver::backward<roi_ops_emulated::EmulatedBackend>);
}
