// What the CPU kernels (nchw.h, nhwc.h) share: the feature maps of a call (one map or the levels of a
// pyramid), the per-RoI sampling tables of RoIAlign / RoIWarp and the integer bins of RoIPool.
//
// The tables are built once per RoI and shared by every channel (and every channel block of nhwc.h).
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

#include <algorithm>
#include <optional>
#include <vector>

#include "../host_checks.h"
#include "../roi_geometry.h"
#include "huge_pages.h"

namespace roi_ops {

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
inline Tensor rois_as(const Tensor& rois, at::ScalarType acc, int64_t N, const char* op) {
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
  int64_t pixels() const {  // N * sum of H_l * W_l
    int64_t p = 0;
    for (int64_t l = 0; l < count(); ++l) p += plane(l);
    return N * p;
  }
};

// Levels from their shapes (checked by host_checks.h); `levels` (int64 [K], each value checked to be in
// [0, L) here) gives the level of each RoI, None that every RoI reads the one map.
inline Levels pyramid(int64_t N, int64_t C, at::IntArrayRef heights, at::IntArrayRef widths,
                      at::ArrayRef<double> scales, const std::optional<Tensor>& levels, const char* op) {
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
  for (const Tensor& m : maps) p.push_back(m.const_data_ptr<scalar_t>());
  return p;
}

template <typename scalar_t>
std::vector<scalar_t*> mutable_ptrs(const std::vector<Tensor>& buffers) {
  std::vector<scalar_t*> p;
  for (const Tensor& b : buffers) p.push_back(b.mutable_data_ptr<scalar_t>());
  return p;
}

// The sampling tables of all RoIs (every channel, block and owner reuses them). Built serially: well under a
// millisecond for a thousand RoIs, less than what one more parallel region costs on a busy machine, where its
// join waits for whichever thread the OS has descheduled.
template <typename T>
std::vector<RoiTable<T>> roi_tables(const T* rois, int64_t K, const Levels& lv, const SampleParams& sp) {
  std::vector<RoiTable<T>> tables(K);
  for (int64_t k = 0; k < K; ++k) {
    const int64_t l = lv.of(k);
    tables[k].build(rois + k * 5, sp, lv.scale[l], lv.H[l], lv.W[l]);
  }
  return tables;
}

// Values a sampled call reads: C x 4 neighbours x the valid samples of every RoI (see worker_threads).
template <typename T>
double sampled_work(const std::vector<RoiTable<T>>& tables, int64_t C) {
  double samples = 0;
  for (const RoiTable<T>& t : tables) samples += static_cast<double>(t.y.samples.size()) * t.x.samples.size();
  return 4.0 * static_cast<double>(C) * samples;
}

// ------------------------------------------------------------------------------------------------
// RoIPool: integer bins of every RoI: rows [hs, he) of bin p of RoI k at [k * ph + p], columns likewise.
struct PoolBins {
  int64_t K = 0, ph = 0, pw = 0;
  std::vector<int64_t> hs, he, ws, we;

  template <typename T>
  void build(const T* rois, int64_t K_, const Levels& lv, int64_t ph_, int64_t pw_) {
    K = K_;
    ph = ph_;
    pw = pw_;
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

  // Values read: C x the cells of every bin (see worker_threads).
  double work(int64_t C) const {
    double cells = 0;
    for (int64_t k = 0; k < K; ++k) {
      int64_t rows = 0, cols = 0;
      for (int64_t p = 0; p < ph; ++p) rows += std::max<int64_t>(he[k * ph + p] - hs[k * ph + p], 0);
      for (int64_t q = 0; q < pw; ++q) cols += std::max<int64_t>(we[k * pw + q] - ws[k * pw + q], 0);
      cells += static_cast<double>(rows) * static_cast<double>(cols);
    }
    return static_cast<double>(C) * cells;
  }
};

}  // namespace roi_ops
