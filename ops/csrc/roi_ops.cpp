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
// CPU strategy
//   forward : parallel over RoIs. The sampling table of a RoI (separable per-axis bilinear neighbours and
//             weights, only for the samples inside the map) is built once and shared by all channels.
//   backward: all tables are built first (parallel over RoIs); then parallel over the (n, c) planes of
//             grad_input (of every level). Each thread owns its planes and visits the RoIs of image n in ascending order,
//             so there are no atomics and the result is bitwise deterministic (independent of the number
//             of threads), with the same summation order per element as a sequential loop over RoIs.
//   plane order: work item i is the plane (n = i % N, c = i / N), so the contiguous item range of each
//             thread spans all images (one image per thread would leave the threads as unbalanced as the
//             images' RoI counts / areas, 10-20% on the bench workload).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cfloat>
#include <optional>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

#include "cpu/huge_pages.h"
#include "host_checks.h"
#include "roi_geometry.h"
#include "schema.h"

namespace roi_ops {
namespace {

using at::Tensor;
using namespace roi_geometry;

struct SampleParams {
  OpKind kind;  // Align or Warp
  int64_t pooled_h, pooled_w, sampling_ratio;
  bool aligned;
};

// ------------------------------------------------------------------------------------------------
// Sampling tables
template <typename T>
struct AxisTable {
  AxisGeom<T> geom;
  std::vector<int> first, last, offset;  // per bin: valid sample range [first, last) and table offset
  std::vector<AxisSample<T>> samples;    // valid samples, bin-major

  void build(const AxisGeom<T>& g, int64_t pooled, int64_t size) {
    geom = g;
    first.resize(pooled);
    last.resize(pooled);
    offset.resize(pooled);
    samples.clear();
    for (int64_t b = 0; b < pooled; ++b) {
      int f, l;
      valid_range<T>(g, b, size, &f, &l);
      first[b] = f;
      last[b] = l;
      offset[b] = static_cast<int>(samples.size());
      for (int i = f; i < l; ++i) samples.push_back(axis_sample<T>(sample_pos<T>(g, b, i), size));
    }
  }
  int count(int64_t b) const { return last[b] - first[b]; }
  const AxisSample<T>* bin(int64_t b) const { return samples.data() + offset[b]; }
};

template <typename T>
struct RoiTable {
  int64_t n = 0;
  AxisTable<T> y, x;
  T count = T(1);  // max(grid_h * grid_w, 1)

  void build(const T* roi, const SampleParams& sp, double scale, int64_t H, int64_t W) {
    n = static_cast<int64_t>(roi[0]);
    const T s = static_cast<T>(scale);
    AxisGeom<T> gy, gx;
    if (sp.kind == OpKind::Align) {
      gy = align_axis<T>(roi[2], roi[4], s, sp.aligned, sp.pooled_h, sp.sampling_ratio);
      gx = align_axis<T>(roi[1], roi[3], s, sp.aligned, sp.pooled_w, sp.sampling_ratio);
    } else {
      gy = warp_axis<T>(roi[2], roi[4], s, sp.pooled_h, sp.sampling_ratio);
      gx = warp_axis<T>(roi[1], roi[3], s, sp.pooled_w, sp.sampling_ratio);
    }
    y.build(gy, sp.pooled_h, H);
    x.build(gx, sp.pooled_w, W);
    count = sample_count<T>(gy.grid, gx.grid);
  }
};

// rois as a contiguous tensor of the coordinate/accumulation type T (float32 rois for half/bfloat16 input
// are used as they are); also validates the batch indices.
Tensor rois_as(const Tensor& rois, at::ScalarType acc, int64_t N, const char* op) {
  Tensor r = rois.to(acc).contiguous();
  AT_DISPATCH_FLOATING_TYPES(r.scalar_type(), "roi_ops_check_rois", [&] {
    const scalar_t* p = r.data_ptr<scalar_t>();
    for (int64_t k = 0; k < r.size(0); ++k) {
      const scalar_t b = p[k * 5];
      TORCH_CHECK(b >= 0 && b < static_cast<scalar_t>(N), op, ": batch index ", b, " of RoI row ", k,
                  " is outside [0, ", N, ")");
    }
  });
  return r;
}

// Bucket RoI indices by image, keeping ascending order.
template <typename T>
std::vector<std::vector<int64_t>> rois_by_image(const T* rois, int64_t K, int64_t N) {
  std::vector<std::vector<int64_t>> by(N);
  for (int64_t k = 0; k < K; ++k) by[static_cast<int64_t>(rois[k * 5])].push_back(k);
  return by;
}

// ------------------------------------------------------------------------------------------------
// The feature maps an op reads: one map, or the levels of an FPN pyramid plus each RoI's level. All
// levels share N, C, the dtype and the device; level l has its own H, W and spatial scale.
struct Levels {
  int64_t N = 0, C = 0;
  std::vector<int64_t> H, W;
  std::vector<double> scale;
  std::vector<int64_t> of_roi;  // level of each RoI; empty: every RoI reads level 0

  int64_t count() const { return static_cast<int64_t>(H.size()); }
  int64_t of(int64_t k) const { return of_roi.empty() ? 0 : of_roi[k]; }
  int64_t plane(int64_t l) const { return H[l] * W[l]; }
};

// Levels from their shapes (checked by host_checks.h); `levels` (int64 [K], each value checked to be in
// [0, L) here) gives the level of each RoI, None that every RoI reads the one map.
Levels pyramid(int64_t N, int64_t C, at::IntArrayRef heights, at::IntArrayRef widths, at::ArrayRef<double> scales,
               const std::optional<Tensor>& levels, const char* op) {
  Levels lv;
  lv.N = N;
  lv.C = C;
  lv.H.assign(heights.begin(), heights.end());
  lv.W.assign(widths.begin(), widths.end());
  lv.scale.assign(scales.begin(), scales.end());
  if (!levels.has_value()) return lv;
  const Tensor lc = levels->contiguous();
  const int64_t* p = lc.data_ptr<int64_t>();
  const int64_t K = lc.size(0), L = lv.count();
  lv.of_roi.assign(p, p + K);
  for (int64_t k = 0; k < K; ++k) {
    TORCH_CHECK(lv.of_roi[k] >= 0 && lv.of_roi[k] < L, op, ": level ", lv.of_roi[k], " of RoI row ", k,
                " is outside [0, ", L, ")");
  }
  return lv;
}

template <typename scalar_t>
std::vector<const scalar_t*> data_ptrs(const std::vector<Tensor>& maps) {
  std::vector<const scalar_t*> p;
  for (const Tensor& m : maps) p.push_back(m.data_ptr<scalar_t>());
  return p;
}

// One uninitialized gradient buffer [N, C, H_l, W_l] per level.
std::vector<Tensor> level_buffers(const Levels& lv, at::ScalarType dtype) {
  std::vector<Tensor> out;
  for (int64_t l = 0; l < lv.count(); ++l) out.push_back(new_buffer({lv.N, lv.C, lv.H[l], lv.W[l]}, dtype));
  return out;
}

// ------------------------------------------------------------------------------------------------
// RoIAlign / RoIWarp forward
template <typename scalar_t, typename T>
inline void avg_bins(const RoiTable<T>& t, const scalar_t* plane, int64_t W, int64_t ph, int64_t pw,
                     scalar_t* out) {
  for (int64_t p = 0; p < ph; ++p) {
    const int ny = t.y.count(p);
    const AxisSample<T>* ys = t.y.bin(p);
    for (int64_t q = 0; q < pw; ++q) {
      const int nx = t.x.count(q);
      const AxisSample<T>* xs = t.x.bin(q);
      // Separable: interpolate along x on the two rows of each y-sample, then along y.
      T sum = T(0);
      for (int a = 0; a < ny; ++a) {
        const AxisSample<T> sy = ys[a];
        const scalar_t* rl = plane + sy.lo * W;
        const scalar_t* rh = plane + sy.hi * W;
        T lo = T(0), hi = T(0);
        for (int b = 0; b < nx; ++b) {
          const AxisSample<T> sx = xs[b];
          lo += sx.wlo * static_cast<T>(rl[sx.lo]) + sx.whi * static_cast<T>(rl[sx.hi]);
          hi += sx.wlo * static_cast<T>(rh[sx.lo]) + sx.whi * static_cast<T>(rh[sx.hi]);
        }
        sum += sy.wlo * lo + sy.whi * hi;
      }
      out[p * pw + q] = static_cast<scalar_t>(sum / t.count);
    }
  }
}

template <typename scalar_t, typename T>
inline void max_bins(const RoiTable<T>& t, const scalar_t* plane, int64_t W, int64_t ph, int64_t pw,
                     scalar_t* out, int32_t* arg) {
  const int gh = t.y.geom.grid, gw = t.x.geom.grid;
  for (int64_t p = 0; p < ph; ++p) {
    const int ny = t.y.count(p), y0 = t.y.first[p];
    const AxisSample<T>* ys = t.y.bin(p);
    for (int64_t q = 0; q < pw; ++q) {
      const int nx = t.x.count(q), x0 = t.x.first[q];
      const AxisSample<T>* xs = t.x.bin(q);
      T best = T(0);
      int bi = -1;
      for (int a = 0; a < ny; ++a) {
        const AxisSample<T> sy = ys[a];
        const scalar_t* rl = plane + sy.lo * W;
        const scalar_t* rh = plane + sy.hi * W;
        for (int b = 0; b < nx; ++b) {
          const AxisSample<T> sx = xs[b];
          const T v = interpolate<T>(weights<T>(sy, sx), static_cast<T>(rl[sx.lo]), static_cast<T>(rl[sx.hi]),
                                     static_cast<T>(rh[sx.lo]), static_cast<T>(rh[sx.hi]));
          max_step<T>(v, (y0 + a) * gw + (x0 + b), &best, &bi);
        }
      }
      max_invalid_zero<T>(first_invalid(gh, gw, y0, y0 + ny, x0, x0 + nx), &best, &bi);
      out[p * pw + q] = static_cast<scalar_t>(bi < 0 ? T(0) : best);
      arg[p * pw + q] = bi;
    }
  }
}

std::tuple<Tensor, Tensor> sampled_forward(const std::vector<Tensor>& inputs, const Tensor& rois_, const Levels& lv,
                                           const SampleParams& sp, bool max_mode, const char* op) {
  const int64_t N = lv.N, C = lv.C, K = rois_.size(0), ph = sp.pooled_h, pw = sp.pooled_w;
  const at::ScalarType dtype = inputs[0].scalar_type();
  Tensor output = new_buffer({K, C, ph, pw}, dtype);  // every element is written below
  Tensor argmax = new_buffer({max_mode ? K : 0, C, ph, pw}, at::kInt);
  if (!max_mode) argmax = argmax.view({0});
  if (K == 0 || C == 0) return {output, argmax};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "roi_ops_sampled_forward", [&] {
    using T = at::opmath_type<scalar_t>;
    const Tensor rois = rois_as(rois_, c10::CppTypeToScalarType<T>::value, N, op);
    const T* r = rois.data_ptr<T>();
    const std::vector<const scalar_t*> in = data_ptrs<scalar_t>(inputs);
    scalar_t* out = output.data_ptr<scalar_t>();
    int32_t* am = max_mode ? argmax.data_ptr<int32_t>() : nullptr;
    // Tables for all RoIs first, then plane-major: each (n, c) plane stays in cache while all RoIs of
    // image n read from it.
    std::vector<RoiTable<T>> tables(K);
    at::parallel_for(0, K, 16, [&](int64_t k0, int64_t k1) {
      for (int64_t k = k0; k < k1; ++k) {
        const int64_t l = lv.of(k);
        tables[k].build(r + k * 5, sp, lv.scale[l], lv.H[l], lv.W[l]);
      }
    });
    const auto by_image = rois_by_image<T>(r, K, N);
    at::parallel_for(0, N * C, 1, [&](int64_t b, int64_t e) {
      for (int64_t nc = b; nc < e; ++nc) {
        const int64_t n = nc % N, c = nc / N;  // see "plane order" at the top
        for (const int64_t k : by_image[n]) {
          const int64_t l = lv.of(k), o = (k * C + c) * ph * pw;
          const scalar_t* plane = in[l] + (n * C + c) * lv.plane(l);
          if (max_mode) {
            max_bins<scalar_t, T>(tables[k], plane, lv.W[l], ph, pw, out + o, am + o);
          } else {
            avg_bins<scalar_t, T>(tables[k], plane, lv.W[l], ph, pw, out + o);
          }
        }
      }
    });
  });
  return {output, argmax};
}

// ------------------------------------------------------------------------------------------------
// Backward (shared by all ops): one gradient per level. grad_input planes are owned by the thread that
// handles their (n, c), which zeroes them on every level and adds the RoIs of image n in ascending order.
// add(k, c, level planes of grad_input) adds RoI k's contribution on channel c; it returns false for a
// corrupt argmax.
template <typename scalar_t, typename AddRoi>
std::vector<Tensor> scatter_backward(const Tensor& rois, const Levels& lv, at::ScalarType dtype, const AddRoi& add,
                                     const char* bad_argmax_message) {
  using T = at::opmath_type<scalar_t>;
  constexpr bool direct = std::is_same<T, scalar_t>::value;
  const int64_t N = lv.N, C = lv.C, L = lv.count(), K = rois.size(0);
  std::vector<Tensor> grad_inputs = level_buffers(lv, dtype);
  if (N * C == 0) return grad_inputs;
  if (K == 0) {
    for (Tensor& g : grad_inputs) g.zero_();
    return grad_inputs;
  }
  const std::vector<Tensor> accs = direct ? grad_inputs : level_buffers(lv, rois.scalar_type());
  std::vector<T*> acc(L);
  for (int64_t l = 0; l < L; ++l) acc[l] = accs[l].template data_ptr<T>();
  const auto by_image = rois_by_image<T>(rois.data_ptr<T>(), K, N);
  std::atomic<bool> bad_argmax{false};
  at::parallel_for(0, N * C, 1, [&](int64_t b, int64_t e) {
    std::vector<T*> planes(L);
    for (int64_t nc = b; nc < e; ++nc) {
      const int64_t n = nc % N, c = nc / N;
      for (int64_t l = 0; l < L; ++l) {
        planes[l] = acc[l] + (n * C + c) * lv.plane(l);
        std::fill(planes[l], planes[l] + lv.plane(l), T(0));
      }
      for (const int64_t k : by_image[n]) {
        if (!add(k, c, planes[lv.of(k)])) bad_argmax = true;
      }
    }
  });
  TORCH_CHECK(!bad_argmax.load(), bad_argmax_message);
  if (!direct) {
    for (int64_t l = 0; l < L; ++l) grad_inputs[l].copy_(accs[l]);
  }
  return grad_inputs;
}

// ------------------------------------------------------------------------------------------------
// RoIAlign / RoIWarp backward
std::vector<Tensor> sampled_backward(const Tensor& grad_, const Tensor& rois_, const Tensor& argmax_, const Levels& lv,
                                     const SampleParams& sp, bool max_mode, const char* op) {
  const int64_t K = rois_.size(0), C = lv.C, ph = sp.pooled_h, pw = sp.pooled_w;
  const Tensor grad = grad_.contiguous();
  const Tensor argmax = max_mode ? argmax_.contiguous() : argmax_;
  std::vector<Tensor> grad_inputs;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "roi_ops_sampled_backward", [&] {
    using T = at::opmath_type<scalar_t>;
    const Tensor rois = rois_as(rois_, c10::CppTypeToScalarType<T>::value, lv.N, op);
    const T* r = rois.data_ptr<T>();
    const scalar_t* g = grad.data_ptr<scalar_t>();
    const int32_t* am = max_mode ? argmax.data_ptr<int32_t>() : nullptr;
    std::vector<RoiTable<T>> tables(K);
    at::parallel_for(0, K, 16, [&](int64_t k0, int64_t k1) {
      for (int64_t k = k0; k < k1; ++k) {
        const int64_t l = lv.of(k);
        tables[k].build(r + k * 5, sp, lv.scale[l], lv.H[l], lv.W[l]);
      }
    });
    const auto add = [&](int64_t k, int64_t c, T* gi) {
      const RoiTable<T>& t = tables[k];
      const int64_t W = lv.W[lv.of(k)];
      const scalar_t* gk = g + (k * C + c) * ph * pw;
      if (!max_mode) {
        for (int64_t p = 0; p < ph; ++p) {
          const int ny = t.y.count(p);
          const AxisSample<T>* ys = t.y.bin(p);
          for (int64_t q = 0; q < pw; ++q) {
            const T gv = static_cast<T>(gk[p * pw + q]);
            if (gv == T(0)) continue;
            const int nx = t.x.count(q);
            const AxisSample<T>* xs = t.x.bin(q);
            for (int a = 0; a < ny; ++a) {
              const AxisSample<T> sy = ys[a];
              T* rl = gi + sy.lo * W;
              T* rh = gi + sy.hi * W;
              for (int bb = 0; bb < nx; ++bb) {
                const AxisSample<T> sx = xs[bb];
                rl[sx.lo] += gv * (sy.wlo * sx.wlo) / t.count;
                rl[sx.hi] += gv * (sy.wlo * sx.whi) / t.count;
                rh[sx.lo] += gv * (sy.whi * sx.wlo) / t.count;
                rh[sx.hi] += gv * (sy.whi * sx.whi) / t.count;
              }
            }
          }
        }
        return true;
      }
      bool ok = true;
      const int32_t* ak = am + (k * C + c) * ph * pw;
      const int gh = t.y.geom.grid, gw = t.x.geom.grid;
      for (int64_t p = 0; p < ph; ++p) {
        for (int64_t q = 0; q < pw; ++q) {
          const int32_t idx = ak[p * pw + q];
          if (idx < 0) continue;
          if (gw <= 0 || idx >= static_cast<int64_t>(gh) * gw) {
            ok = false;
            continue;
          }
          const T gv = static_cast<T>(gk[p * pw + q]);
          const int iy = idx / gw - t.y.first[p], ix = idx % gw - t.x.first[q];
          if (iy < 0 || iy >= t.y.count(p) || ix < 0 || ix >= t.x.count(q)) continue;  // outside the map
          const AxisSample<T> sy = t.y.bin(p)[iy];
          const AxisSample<T> sx = t.x.bin(q)[ix];
          T* rl = gi + sy.lo * W;
          T* rh = gi + sy.hi * W;
          rl[sx.lo] += gv * (sy.wlo * sx.wlo);
          rl[sx.hi] += gv * (sy.wlo * sx.whi);
          rh[sx.lo] += gv * (sy.whi * sx.wlo);
          rh[sx.hi] += gv * (sy.whi * sx.whi);
        }
      }
      return ok;
    };
    const std::string bad = std::string(op) + ": argmax holds an index outside the sampling grid";
    grad_inputs = scatter_backward<scalar_t>(rois, lv, grad.scalar_type(), add, bad.c_str());
  });
  return grad_inputs;
}

// ------------------------------------------------------------------------------------------------
// RoIPool
// Integer bins of every RoI: rows [hs, he) of bin p of RoI k at [k * ph + p], columns likewise.
struct PoolBins {
  std::vector<int64_t> hs, he, ws, we;

  template <typename T>
  void build(const T* rois, int64_t K, const Levels& lv, int64_t ph, int64_t pw) {
    hs.resize(K * ph);
    he.resize(K * ph);
    ws.resize(K * pw);
    we.resize(K * pw);
    for (int64_t k = 0; k < K; ++k) {
      const T* roi = rois + k * 5;
      const int64_t l = lv.of(k);
      const T s = static_cast<T>(lv.scale[l]);
      const PoolAxis ay = pool_axis<T>(roi[2], roi[4], s);
      const PoolAxis ax = pool_axis<T>(roi[1], roi[3], s);
      for (int64_t p = 0; p < ph; ++p) pool_bin<T>(ay, ph, p, lv.H[l], &hs[k * ph + p], &he[k * ph + p]);
      for (int64_t q = 0; q < pw; ++q) pool_bin<T>(ax, pw, q, lv.W[l], &ws[k * pw + q], &we[k * pw + q]);
    }
  }
};

// Max + argmax of every bin of one RoI on one (n, c) plane; the first maximum in raster order wins.
// (A branch-free variant -- constant lh x lw windows with clamped indices, maxss, then a search for the
// first cell equal to the maximum -- measured 2x slower on the bench workload: bins are small and the
// predictor copes with the plain loop.)
template <typename scalar_t, typename T>
inline void pool_roi_plane(const scalar_t* plane, int64_t W, const int64_t* hs, const int64_t* he,
                           const int64_t* ws, const int64_t* we, int64_t ph, int64_t pw, scalar_t* out,
                           int32_t* arg) {
  for (int64_t p = 0; p < ph; ++p) {
    for (int64_t q = 0; q < pw; ++q) {
      const bool empty = he[p] <= hs[p] || we[q] <= ws[q];
      T best = empty ? T(0) : T(-FLT_MAX);
      int64_t bi = -1;
      for (int64_t h = hs[p]; h < he[p]; ++h) {
        const scalar_t* row = plane + h * W;
        for (int64_t w = ws[q]; w < we[q]; ++w) {
          const T v = static_cast<T>(row[w]);
          if (v > best) {
            best = v;
            bi = h * W + w;
          }
        }
      }
      out[p * pw + q] = static_cast<scalar_t>(best);
      arg[p * pw + q] = static_cast<int32_t>(bi);
    }
  }
}

std::tuple<Tensor, Tensor> pool_forward(const std::vector<Tensor>& inputs, const Tensor& rois_, const Levels& lv,
                                        int64_t ph, int64_t pw, const char* op) {
  const int64_t N = lv.N, C = lv.C, K = rois_.size(0);
  const at::ScalarType dtype = inputs[0].scalar_type();
  Tensor output = new_buffer({K, C, ph, pw}, dtype);  // every element is written below
  Tensor argmax = new_buffer({K, C, ph, pw}, at::kInt);
  if (K == 0 || C == 0) return {output, argmax};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "roi_ops_pool_forward", [&] {
    using T = at::opmath_type<scalar_t>;
    const Tensor rois = rois_as(rois_, c10::CppTypeToScalarType<T>::value, N, op);
    const T* r = rois.data_ptr<T>();
    const std::vector<const scalar_t*> in = data_ptrs<scalar_t>(inputs);
    scalar_t* out = output.data_ptr<scalar_t>();
    int32_t* am = argmax.data_ptr<int32_t>();
    PoolBins bins;
    bins.build<T>(r, K, lv, ph, pw);
    const auto by_image = rois_by_image<T>(r, K, N);
    at::parallel_for(0, N * C, 1, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) {
        const int64_t n = i % N, c = i / N;
        for (const int64_t k : by_image[n]) {
          const int64_t l = lv.of(k), o = (k * C + c) * ph * pw;
          const scalar_t* plane = in[l] + (n * C + c) * lv.plane(l);
          pool_roi_plane<scalar_t, T>(plane, lv.W[l], bins.hs.data() + k * ph, bins.he.data() + k * ph,
                                      bins.ws.data() + k * pw, bins.we.data() + k * pw, ph, pw, out + o, am + o);
        }
      }
    });
  });
  return {output, argmax};
}

std::vector<Tensor> pool_backward(const Tensor& grad_, const Tensor& rois_, const Tensor& argmax_, const Levels& lv,
                                  int64_t ph, int64_t pw, const char* op) {
  const int64_t C = lv.C, PP = ph * pw;
  const Tensor grad = grad_.contiguous();
  const Tensor argmax = argmax_.contiguous();
  std::vector<Tensor> grad_inputs;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "roi_ops_pool_backward", [&] {
    using T = at::opmath_type<scalar_t>;
    const Tensor rois = rois_as(rois_, c10::CppTypeToScalarType<T>::value, lv.N, op);
    const scalar_t* g = grad.data_ptr<scalar_t>();
    const int32_t* am = argmax.data_ptr<int32_t>();
    const auto add = [&](int64_t k, int64_t c, T* gi) {
      const int64_t HW = lv.plane(lv.of(k));
      const scalar_t* gk = g + (k * C + c) * PP;
      const int32_t* ak = am + (k * C + c) * PP;
      bool ok = true;
      for (int64_t i = 0; i < PP; ++i) {
        const int32_t idx = ak[i];
        if (idx < 0) continue;
        if (idx >= HW) {
          ok = false;
          continue;
        }
        gi[idx] += static_cast<T>(gk[i]);
      }
      return ok;
    };
    const std::string bad = std::string(op) + ": argmax holds an index outside the input plane";
    grad_inputs = scatter_backward<scalar_t>(rois, lv, grad.scalar_type(), add, bad.c_str());
  });
  return grad_inputs;
}

// ------------------------------------------------------------------------------------------------
// Entry points: the schema pair. RoI k reads map levels[k] (map 0 when levels is None).
std::tuple<Tensor, Tensor> multilevel_roi_forward_cpu(at::TensorList inputs, const Tensor& rois,
                                                      const std::optional<Tensor>& levels,
                                                      at::ArrayRef<double> spatial_scales, c10::string_view kind,
                                                      int64_t ph, int64_t pw, int64_t sampling_ratio, bool aligned,
                                                      bool max_mode) {
  const char* op = "multilevel_roi_forward";
  const OpKind k = op_kind(kind, op);
  check_forward(inputs, rois, levels, spatial_scales, ph, pw, op);
  std::vector<Tensor> maps;
  std::vector<int64_t> heights, widths;
  for (const Tensor& m : inputs) {
    maps.push_back(m.contiguous());
    heights.push_back(m.size(2));
    widths.push_back(m.size(3));
  }
  const Levels lv = pyramid(maps[0].size(0), maps[0].size(1), heights, widths, spatial_scales, levels, op);
  if (k == OpKind::Pool) return pool_forward(maps, rois, lv, ph, pw, op);
  const SampleParams sp{k, ph, pw, sampling_ratio, k == OpKind::Align ? aligned : true};
  return sampled_forward(maps, rois, lv, sp, max_mode, op);
}

std::vector<Tensor> multilevel_roi_backward_cpu(const Tensor& grad, const Tensor& rois,
                                                const std::optional<Tensor>& levels, const Tensor& argmax,
                                                at::ArrayRef<double> spatial_scales, c10::string_view kind, int64_t ph,
                                                int64_t pw, int64_t N, int64_t C, at::IntArrayRef heights,
                                                at::IntArrayRef widths, int64_t sampling_ratio, bool aligned,
                                                bool max_mode) {
  const char* op = "multilevel_roi_backward";
  const OpKind k = op_kind(kind, op);
  const bool need_argmax = k == OpKind::Pool || max_mode;
  check_backward(grad, rois, levels, argmax, need_argmax, spatial_scales, ph, pw, N, C, heights, widths, op);
  const Levels lv = pyramid(N, C, heights, widths, spatial_scales, levels, op);
  if (k == OpKind::Pool) return pool_backward(grad, rois, argmax, lv, ph, pw, op);
  const SampleParams sp{k, ph, pw, sampling_ratio, k == OpKind::Align ? aligned : true};
  return sampled_backward(grad, rois, argmax, lv, sp, max_mode, op);
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
