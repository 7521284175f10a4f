// The host driver of the CUDA kernels: from the schema's arguments to launches of the item functions of
// roi_kernels.h. One template for two backends:
//   * CudaBackend (cuda/roi_ops_cuda.cu): launches each item type as a grid-stride `__global__` kernel with
//     atomicAdd accumulation;
//   * EmulatedBackend (emulation/roi_ops_emulated.cpp): runs the same items serially on the CPU with `+=`.
// Everything between the schema and the launch is therefore executed in CPU CI too: the checks, the layout
// decision (NCHW / NHWC / vectorised NHWC and its alignment gate), the map table and level lookup, the
// transposed grad/argmax layouts, the deterministic ownership partition and its sort/searchsorted bounds.
//
// A backend B provides:
//   using Acc                       accumulation policy of the atomic backward items (roi_kernels.h)
//   struct Guard(const Tensor&)     device guard for the call
//   int64_t sm_count()              multiprocessors, to size the deterministic path's column chunks
//   void launch<Item>(const Args&)  runs Item::run(args, i) for every i in [0, args.total)
//
// No host sync: level and batch-index values are never read on the host (the items treat bad ones as
// "output 0, no gradient").
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>

#include <optional>
#include <tuple>
#include <vector>

#include "host_checks.h"
#include "map_layout.h"
#include "roi_kernels.h"

namespace roi_driver {

using at::Tensor;
using namespace roi_kernels;
using roi_ops::OpKind;

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Layout decision for all maps together (map_layout.h): NHWC when every map is channels_last, else NCHW (maps
// made contiguous where needed: a pyramid of mixed layouts pays a copy of its channels_last levels; the backbone
// gives all levels one layout).
inline std::vector<Tensor> prepare_inputs(at::TensorList inputs, bool* nhwc) {
  *nhwc = roi_ops::nhwc_maps(inputs);
  std::vector<Tensor> out;
  for (const Tensor& x : inputs) out.push_back(*nhwc ? x : x.contiguous());
  return out;
}

template <typename P>
Maps<P> maps_of(const std::vector<P>& data, at::IntArrayRef heights, at::IntArrayRef widths,
                at::ArrayRef<double> scales) {
  Maps<P> m{};
  m.L = static_cast<int>(data.size());
  for (int l = 0; l < m.L; ++l) {
    m.data[l] = data[l];
    m.H[l] = heights[l];
    m.W[l] = widths[l];
    m.scale[l] = scales[l];
  }
  return m;
}

// The forward's table of input maps: data pointers, sizes and spatial scales.
template <typename scalar_t>
Maps<const scalar_t*> input_maps(const std::vector<Tensor>& inputs, at::ArrayRef<double> scales) {
  std::vector<const scalar_t*> data;
  std::vector<int64_t> heights, widths;
  for (const Tensor& x : inputs) {
    data.push_back(x.const_data_ptr<scalar_t>());
    heights.push_back(x.size(2));
    widths.push_back(x.size(3));
  }
  return maps_of(data, heights, widths, scales);
}

inline void check_map_count(size_t L, const char* op) {
  TORCH_CHECK(L <= static_cast<size_t>(kMaxLevels), op, ": supports 1 to ", kMaxLevels, " feature maps, got ", L);
}

inline Tensor levels_or_empty(const std::optional<Tensor>& levels) {
  return levels.has_value() ? levels->contiguous() : Tensor();
}

template <typename B>
std::tuple<Tensor, Tensor> forward(at::TensorList inputs_, const Tensor& rois_, const std::optional<Tensor>& levels_,
                                   at::ArrayRef<double> scales, c10::string_view kind_, int64_t ph, int64_t pw,
                                   int64_t sampling_ratio, bool aligned, bool max_mode) {
  const char* op = "multilevel_roi_forward";
  const OpKind kind = roi_ops::op_kind(kind_, op);
  roi_ops::check_forward(inputs_, rois_, levels_, scales, ph, pw, op);
  check_map_count(inputs_.size(), op);
  const bool pool = kind == OpKind::Pool, has_argmax = pool || max_mode;
  const typename B::Guard guard(inputs_[0]);
  const int64_t N = inputs_[0].size(0), C = inputs_[0].size(1), K = rois_.size(0);
  const at::TensorOptions options = inputs_[0].options();
  Tensor output = at::empty({K, C, ph, pw}, options);
  Tensor argmax = at::empty(has_argmax ? at::IntArrayRef{K, C, ph, pw} : at::IntArrayRef{0}, options.dtype(at::kInt));
  if (output.numel() == 0) return {output, argmax};
  bool nhwc = false;
  const std::vector<Tensor> inputs = prepare_inputs(inputs_, &nhwc);
  const Tensor levels = levels_or_empty(levels_);
  const Tensor rois = rois_.to(roi_ops::coord_type(inputs[0].scalar_type())).contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, inputs[0].scalar_type(), "roi_ops_forward", [&] {
    using T = at::opmath_type<scalar_t>;
    const int64_t* lv = levels.defined() ? levels.const_data_ptr<int64_t>() : nullptr;
    if (pool) {
      PoolFwdArgs<scalar_t> a;
      a.maps = input_maps<scalar_t>(inputs, scales);
      a.levels = lv;
      a.rois = rois.const_data_ptr<T>();
      a.out = output.mutable_data_ptr<scalar_t>();
      a.argmax = argmax.mutable_data_ptr<int32_t>();
      a.total = output.numel();
      a.N = N;
      a.C = C;
      a.PH = ph;
      a.PW = pw;
      if (nhwc) {
        B::template launch<PoolForward<scalar_t, true>>(a);
      } else {
        B::template launch<PoolForward<scalar_t, false>>(a);
      }
      return;
    }
    constexpr int V = 16 / sizeof(scalar_t);  // 16-byte vectors: 4 float, 2 double, 8 half/bfloat16
    SampledFwdArgs<scalar_t> a;
    a.maps = input_maps<scalar_t>(inputs, scales);
    bool aligned16 = true;  // the gate of the vector loads
    for (int l = 0; l < a.maps.L; ++l) aligned16 = aligned16 && reinterpret_cast<uintptr_t>(a.maps.data[l]) % 16 == 0;
    a.levels = lv;
    a.rois = rois.const_data_ptr<T>();
    a.out = output.mutable_data_ptr<scalar_t>();
    a.argmax = max_mode ? argmax.mutable_data_ptr<int32_t>() : nullptr;
    a.N = N;
    a.C = C;
    a.PH = ph;
    a.PW = pw;
    a.sampling_ratio = sampling_ratio;
    a.aligned = kind == OpKind::Align ? aligned : true;
    a.warp = kind == OpKind::Warp;
    a.max_mode = max_mode;
    const bool vec = nhwc && C % V == 0 && aligned16;
    a.total = K * ph * pw * (vec ? C / V : C);
    if (vec) {
      B::template launch<SampledForward<scalar_t, V, true>>(a);
    } else if (nhwc) {
      B::template launch<SampledForward<scalar_t, 1, true>>(a);
    } else {
      B::template launch<SampledForward<scalar_t, 1, false>>(a);
    }
  });
  return {output, argmax};
}

// Columns per item of the deterministic gather: enough items to fill the GPU (2048 threads per
// multiprocessor), but chunks of at least 4 columns (every item scans all RoIs of its level).
inline void gather_chunks(int64_t sms, int64_t N, int64_t C, int64_t H, int64_t W, int64_t* chunk_w,
                          int64_t* n_chunks) {
  int64_t want = ceil_div(sms * 2048, N * C * (H > 0 ? H : 1));
  const int64_t most = ceil_div(W, 4);
  if (want > most) want = most;
  if (want < 1) want = 1;
  *chunk_w = ceil_div(W, want);
  *n_chunks = *chunk_w > 0 ? ceil_div(W, *chunk_w) : 0;
}

// One gradient [N, C, H_l, W_l] per level (channels_last when asked), accumulated in T as [N, H_l, W_l, C] and
// copied out at the end.
template <typename B>
std::vector<Tensor> backward(const Tensor& grad_, const Tensor& rois_, const std::optional<Tensor>& levels_,
                             const Tensor& argmax_, at::ArrayRef<double> scales, c10::string_view kind_, int64_t ph,
                             int64_t pw, int64_t N, int64_t C, at::IntArrayRef heights, at::IntArrayRef widths,
                             int64_t sampling_ratio, bool aligned, bool max_mode, bool channels_last) {
  const char* op = "multilevel_roi_backward";
  const OpKind kind = roi_ops::op_kind(kind_, op);
  const bool pool = kind == OpKind::Pool;
  max_mode = max_mode && !pool;
  const bool need_argmax = pool || max_mode;
  roi_ops::check_backward(grad_, rois_, levels_, argmax_, need_argmax, scales, ph, pw, N, C, heights, widths, op);
  const size_t L = heights.size();
  check_map_count(L, op);
  const typename B::Guard guard(grad_);
  const int64_t K = rois_.size(0);
  const at::ScalarType acc_type = roi_ops::coord_type(grad_.scalar_type());
  std::vector<Tensor> accs;
  for (size_t l = 0; l < L; ++l) accs.push_back(at::zeros({N, heights[l], widths[l], C}, grad_.options().dtype(acc_type)));
  if (K > 0 && N * C > 0) {
    const bool det = at::globalContext().deterministicAlgorithms();
    const Tensor levels = levels_or_empty(levels_);
    // Channel-last views of grad / argmax so that channel-fastest items read them coalesced.
    const Tensor grad = grad_.permute({0, 2, 3, 1}).contiguous();
    const Tensor argmax = need_argmax ? argmax_.permute({0, 2, 3, 1}).contiguous() : Tensor();
    const Tensor rois = rois_.to(acc_type).contiguous();
    // Deterministic path with levels: RoIs grouped by level on the device (a stable sort keeps each level's
    // RoIs in ascending order, the summation order of the per-level op; no host sync).
    Tensor by_level, level_begin;
    if (det && levels.defined()) {
      // All four arguments: at::sort(levels, true) binds `true` to the int64_t `dim` overload (dim=1 of a 1-D
      // tensor: "Dimension out of range").
      const auto sorted = at::sort(levels, /*stable=*/true, /*dim=*/0, /*descending=*/false);
      by_level = std::get<1>(sorted).contiguous();
      const Tensor bounds = at::arange(static_cast<int64_t>(L) + 1, levels.options());
      level_begin = at::searchsorted(std::get<0>(sorted), bounds);  // first sorted position of each level
    }
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "roi_ops_backward", [&] {
      using T = at::opmath_type<scalar_t>;
      std::vector<T*> data;
      for (Tensor& acc : accs) data.push_back(acc.mutable_data_ptr<T>());
      BwdArgs<scalar_t> a;
      a.maps = maps_of(data, heights, widths, scales);
      a.levels = levels.defined() ? levels.const_data_ptr<int64_t>() : nullptr;
      a.by_level = by_level.defined() ? by_level.const_data_ptr<int64_t>() : nullptr;
      a.level_begin = level_begin.defined() ? level_begin.const_data_ptr<int64_t>() : nullptr;
      a.grad = grad.const_data_ptr<scalar_t>();
      a.argmax = need_argmax ? argmax.const_data_ptr<int32_t>() : nullptr;
      a.rois = rois.const_data_ptr<T>();
      a.K = K;
      a.N = N;
      a.C = C;
      a.PH = ph;
      a.PW = pw;
      a.sampling_ratio = sampling_ratio;
      a.aligned = kind == OpKind::Align ? aligned : true;
      a.warp = kind == OpKind::Warp;
      a.max_mode = max_mode;
      if (det) {
        // Ownership partition: level l owns items [items[l], items[l + 1]), one per (n, y, chunk, c).
        a.maps.items[0] = 0;
        for (size_t l = 0; l < L; ++l) {
          gather_chunks(B::sm_count(), N, C, heights[l], widths[l], &a.maps.chunk_w[l], &a.maps.n_chunks[l]);
          a.maps.items[l + 1] = a.maps.items[l] + N * heights[l] * a.maps.n_chunks[l] * C;
        }
        a.total = a.maps.items[L];
        if (pool) {
          B::template launch<PoolBackwardGather<scalar_t>>(a);
        } else {
          B::template launch<SampledBackwardGather<scalar_t>>(a);
        }
      } else {
        a.total = K * ph * pw * C;
        if (pool) {
          B::template launch<PoolBackwardAtomic<scalar_t, typename B::Acc>>(a);
        } else {
          B::template launch<SampledBackwardAtomic<scalar_t, typename B::Acc>>(a);
        }
      }
    });
  }
  std::vector<Tensor> grad_inputs;
  for (size_t l = 0; l < L; ++l) {
    const auto format = channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
    grad_inputs.push_back(at::empty({N, C, heights[l], widths[l]}, grad_.options().memory_format(format)));
    grad_inputs.back().copy_(accs[l].permute({0, 3, 1, 2}));
  }
  return grad_inputs;
}

}  // namespace roi_driver
