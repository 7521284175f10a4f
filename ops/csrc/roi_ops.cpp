// roi_ops: the schema pair (TORCH_LIBRARY) and the CPU kernels of RoIAlign, RoIWarp and RoIPool.
//
// The CUDA kernels live in cuda/roi_ops_cuda.cu and register themselves with
// TORCH_LIBRARY_IMPL(roi_ops, CUDA, m); a CPU-only build simply leaves that file out.
//
// Shapes: inputs L x [N, C, H_l, W_l], rois [K, 5] = (batch_idx, x1, y1, x2, y2), levels Int64[K] or None
// (one map), output [K, C, ph, pw]. RoI k reads inputs[levels[k]] with spatial_scales[levels[k]]. There is
// one schema pair, multilevel_roi_forward / multilevel_roi_backward: ops.roi_align, roi_pool and roi_warp
// call it with one map, so single-level and FPN calls share one implementation and one summation order.
// Dtypes: the rois are in the input dtype or in the coordinate type T = at::opmath_type (float32 for
// half/bfloat16 input, which the Python API always passes); all geometry and accumulation runs in T.
//
// CPU kernels: the vector kernels of cpu/vec_bins.h (at::vec, over channels) run in place on channels_last maps
// (cpu/nhwc.h, forward) or on blocks of channels in cache (cpu/blocked.h: NCHW forward, every backward);
// cpu/nchw.h runs NCHW maps scalar, plane by plane, where that wins (cpu/layout.h). All give the same bits. The
// backward returns the gradients in the layout the schema's `channels_last` asks for (the maps' layout,
// map_layout.h). This file is built for the vector ISA of the machine that loads it (ops/build), so at::vec
// uses its widest vectors.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <optional>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

#include "cpu/blocked.h"
#include "cpu/huge_pages.h"
#include "cpu/layout.h"
#include "cpu/nchw.h"
#include "cpu/nhwc.h"
#include "cpu/parallel.h"
#include "cpu/tables.h"
#include "cpu/vec_bins.h"
#include "host_checks.h"
#include "map_layout.h"
#include "schema.h"

namespace roi_ops {
namespace {

template <typename T>
std::vector<int64_t> batch_indices(const T* rois, int64_t K) {
  std::vector<int64_t> image(K);
  for (int64_t k = 0; k < K; ++k) image[k] = static_cast<int64_t>(rois[k * 5]);
  return image;
}

// The routes (cpu/layout.h): channels_last maps in place (forward) or through channel blocks (backward); NCHW
// maps through channel blocks or plane by plane.
enum class Route { Nhwc, Blocked, Nchw };

template <typename T>
Route route(bool channels_last, bool forward, const Levels& lv, int64_t K, int64_t PP) {
  if (channels_last) return forward ? Route::Nhwc : Route::Blocked;
  return blocked_pays(lv, K, PP, at::vec::Vectorized<T>::size()) ? Route::Blocked : Route::Nchw;
}

// Threads for a call (worker_threads): its kernel work, plus the K x C x PP values of the output (forward) or
// upstream gradient (backward), plus the maps a blocked call transposes or the gradients it writes.
int call_threads(double kernel_work, int64_t C, int64_t K, int64_t PP, const Levels& lv, Route rt) {
  return worker_threads(kernel_work + static_cast<double>(C) * (K * PP + (rt == Route::Blocked ? lv.pixels() : 0)));
}

// ------------------------------------------------------------------------------------------------
// Entry points: the schema pair. RoI k reads map levels[k] (map 0 when levels is None).
std::tuple<Tensor, Tensor> multilevel_roi_forward_cpu(at::TensorList inputs, const Tensor& rois_,
                                                      const std::optional<Tensor>& levels,
                                                      at::ArrayRef<double> spatial_scales, c10::string_view kind_,
                                                      int64_t ph, int64_t pw, int64_t sampling_ratio, bool aligned,
                                                      bool max_mode) {
  const char* op = "multilevel_roi_forward";
  const OpKind kind = op_kind(kind_, op);
  check_forward(inputs, rois_, levels, spatial_scales, ph, pw, op);
  std::vector<int64_t> heights, widths;
  for (const Tensor& m : inputs) {
    heights.push_back(m.size(2));
    widths.push_back(m.size(3));
  }
  const int64_t N = inputs[0].size(0), C = inputs[0].size(1), K = rois_.size(0), PP = ph * pw;
  const Levels lv = pyramid(N, C, heights, widths, spatial_scales, levels, op);
  const bool pool = kind == OpKind::Pool, has_argmax = pool || max_mode;
  const at::ScalarType dtype = inputs[0].scalar_type();
  Tensor output = new_buffer({K, C, ph, pw}, dtype);  // every element is written below
  Tensor argmax = new_buffer({has_argmax ? K : 0, C, ph, pw}, at::kInt);
  if (!has_argmax) argmax = argmax.view({0});
  const Tensor rois = rois_as(rois_, coord_type(dtype), N, op);
  if (K == 0 || C == 0) return {output, argmax};
  const bool channels_last = nhwc_maps(inputs);
  std::vector<Tensor> maps;
  for (const Tensor& m : inputs) maps.push_back(channels_last ? m : m.contiguous());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "roi_ops_forward", [&] {
    using T = at::opmath_type<scalar_t>;
    const T* r = rois.const_data_ptr<T>();
    const std::vector<const scalar_t*> in = data_ptrs<scalar_t>(maps);
    scalar_t* out = output.mutable_data_ptr<scalar_t>();
    int32_t* am = has_argmax ? argmax.mutable_data_ptr<int32_t>() : nullptr;
    const auto by_image = rois_by_image<T>(r, K, N);
    const Route rt = route<T>(channels_last, true, lv, K, PP);
    // The vector kernels' tiles of RoI k from `base` (the map, or a transposed channel block: element type M).
    const auto run = [&](int threads, const auto& tile) {
      if (rt == Route::Nhwc) {
        nhwc::forward<scalar_t, T>(in, batch_indices<T>(r, K), lv, K, PP, out, am, threads, tile);
      } else {
        blocked::forward<scalar_t, T>(in, by_image, lv, PP, out, am, threads, tile);
      }
    };
    if (pool) {
      PoolBins bins;
      bins.build<T>(r, K, lv, ph, pw);
      const int threads = call_threads(bins.work(C), C, K, PP, lv, rt);
      if (rt == Route::Nchw) return nchw::pool_forward<scalar_t, T>(in, bins, by_image, lv, ph, pw, out, am, threads);
      return run(threads, [&](int64_t k, const auto* base, int64_t ps, int64_t nc, T* values, int32_t* argmaxes) {
        using M = std::remove_cv_t<std::remove_pointer_t<decltype(base)>>;
        vec_bins::pool_tile<M, T>(bins, k, base, ps, lv.W[lv.of(k)], ph, pw, nc, values, argmaxes);
      });
    }
    const SampleParams sp{kind, ph, pw, sampling_ratio, kind == OpKind::Align ? aligned : true};
    const std::vector<RoiTable<T>> tables = roi_tables<T>(r, K, lv, sp);
    const int threads = call_threads(sampled_work(tables, C), C, K, PP, lv, rt);
    if (rt == Route::Nchw) {
      return nchw::sampled_forward<scalar_t, T>(in, tables, by_image, lv, ph, pw, max_mode, out, am, threads);
    }
    run(threads, [&](int64_t k, const auto* base, int64_t ps, int64_t nc, T* values, int32_t* argmaxes) {
      using M = std::remove_cv_t<std::remove_pointer_t<decltype(base)>>;
      const int64_t W = lv.W[lv.of(k)];
      if (max_mode) {
        vec_bins::max_tile<M, T>(tables[k], base, ps, W, ph, pw, nc, values, argmaxes);
      } else {
        vec_bins::avg_tile<M, T>(tables[k], base, ps, W, ph, pw, nc, values);
      }
    });
  });
  return {output, argmax};
}

// The gradient of every level: [N, C, H_l, W_l], channels_last when asked (the maps' layout).
std::vector<Tensor> multilevel_roi_backward_cpu(const Tensor& grad_, const Tensor& rois_,
                                                const std::optional<Tensor>& levels, const Tensor& argmax_,
                                                at::ArrayRef<double> spatial_scales, c10::string_view kind_,
                                                int64_t ph, int64_t pw, int64_t N, int64_t C,
                                                at::IntArrayRef heights, at::IntArrayRef widths,
                                                int64_t sampling_ratio, bool aligned, bool max_mode,
                                                bool channels_last) {
  const char* op = "multilevel_roi_backward";
  const OpKind kind = op_kind(kind_, op);
  const bool pool = kind == OpKind::Pool;
  max_mode = max_mode && !pool;
  const bool need_argmax = pool || max_mode;
  check_backward(grad_, rois_, levels, argmax_, need_argmax, spatial_scales, ph, pw, N, C, heights, widths, op);
  const Levels lv = pyramid(N, C, heights, widths, spatial_scales, levels, op);
  const int64_t K = rois_.size(0), L = lv.count(), PP = ph * pw;
  const at::ScalarType dtype = grad_.scalar_type(), acc_type = coord_type(dtype);
  const Tensor rois = rois_as(rois_, acc_type, N, op);
  const Tensor grad = grad_.contiguous();
  const Tensor argmax = need_argmax ? argmax_.contiguous() : Tensor();
  const std::string bad = std::string(op) + (pool ? ": argmax holds an index outside the input plane"
                                                  : ": argmax holds an index outside the sampling grid");
  std::vector<Tensor> grads;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "roi_ops_backward", [&] {
    using T = at::opmath_type<scalar_t>;
    const Route rt = route<T>(channels_last, false, lv, K, PP);
    // Blocked: the gradients themselves (every element written; channels_last: [N, H_l, W_l, C]); nchw:
    // accumulators [N, C, H_l, W_l] of T (the gradients themselves for float and double), zeroed by nchw::scatter.
    std::vector<Tensor> bufs;
    for (int64_t l = 0; l < L; ++l) {
      if (rt == Route::Nchw) {
        bufs.push_back(new_buffer({N, C, lv.H[l], lv.W[l]}, acc_type));
      } else if (channels_last) {
        bufs.push_back(new_buffer({N, lv.H[l], lv.W[l], C}, dtype));
      } else {
        bufs.push_back(new_buffer({N, C, lv.H[l], lv.W[l]}, dtype));
      }
    }
    if (N * C > 0) {
      const T* r = rois.const_data_ptr<T>();
      const scalar_t* g = grad.const_data_ptr<scalar_t>();
      const int32_t* am = need_argmax ? argmax.const_data_ptr<int32_t>() : nullptr;
      const auto by_image = rois_by_image<T>(r, K, N);
      // RoI k's contribution through the vector kernels (vec_bins.h).
      const auto run = [&](int threads, const auto& add) {
        blocked::backward<scalar_t, T>(g, am, mutable_ptrs<scalar_t>(bufs), channels_last, lv, by_image, PP, threads,
                                       add, bad.c_str());
      };
      if (pool) {
        PoolBins bins;
        bins.build<T>(r, K, lv, ph, pw);
        const int threads = call_threads(bins.work(C), C, K, PP, lv, rt);
        if (rt == Route::Nchw) {
          nchw::pool_backward<scalar_t, T>(g, am, by_image, lv, PP, mutable_ptrs<T>(bufs), bad.c_str(), threads);
        } else {
          run(threads, [&](int64_t k, int64_t nc, const T* gt, const int32_t* at, T* base, int64_t ps) {
            const int64_t l = lv.of(k);
            return vec_bins::pool_scatter_tile<T>(bins, k, gt, at, base, ps, lv.W[l], lv.plane(l), ph, pw, nc);
          });
        }
      } else {
        const SampleParams sp{kind, ph, pw, sampling_ratio, kind == OpKind::Align ? aligned : true};
        const std::vector<RoiTable<T>> tables = roi_tables<T>(r, K, lv, sp);
        const int threads = call_threads(sampled_work(tables, C), C, K, PP, lv, rt);
        if (rt == Route::Nchw) {
          nchw::sampled_backward<scalar_t, T>(g, am, tables, by_image, lv, ph, pw, max_mode, mutable_ptrs<T>(bufs),
                                              bad.c_str(), threads);
        } else {
          run(threads, [&](int64_t k, int64_t nc, const T* gt, const int32_t* at, T* base, int64_t ps) {
            const int64_t W = lv.W[lv.of(k)];
            if (max_mode) return vec_bins::max_scatter_tile<T>(tables[k], gt, at, base, ps, W, ph, pw, nc);
            vec_bins::avg_scatter<T>(tables[k], gt, base, ps, W, ph, pw, nc);
            return true;
          });
        }
      }
    }
    for (const Tensor& b : bufs) {
      if (rt == Route::Nchw) {
        grads.push_back(b.to(dtype));  // no copy for float and double
      } else {
        grads.push_back(channels_last ? b.permute({0, 3, 1, 2}) : b);  // [N, H, W, C] memory is channels_last
      }
    }
  });
  return grads;
}

}  // namespace
}  // namespace roi_ops

TORCH_LIBRARY(roi_ops, m) {
  m.def((std::string("multilevel_roi_forward") + roi_ops::kForwardSchema).c_str());
  m.def((std::string("multilevel_roi_backward") + roi_ops::kBackwardSchema).c_str());
}

TORCH_LIBRARY_IMPL(roi_ops, CPU, m) {
  m.impl("multilevel_roi_forward", &roi_ops::multilevel_roi_forward_cpu);
  m.impl("multilevel_roi_backward", &roi_ops::multilevel_roi_backward_cpu);
}
