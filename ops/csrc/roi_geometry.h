// Shared RoI geometry for the CPU (roi_ops.cpp) and CUDA (cuda/roi_ops_cuda.cu) kernels.
//
// Header-only, plain C++ (no ATen): every function is usable on the host and, under nvcc, on the device.
// T is the geometry/accumulation type: float for float/half/bfloat16 inputs, double for double inputs.
//
// Conventions (see DESIGN.md, "Op semantics"):
//   RoIAlign : coordinates are c * spatial_scale - (aligned ? 0.5 : 0), never rounded; without `aligned`
//              the RoI size is clamped to >= 1. Bin b of an axis samples at
//                  start + b * bin_size + (i + 0.5) * bin_size / grid,   i = 0 .. grid-1
//              with grid = sampling_ratio > 0 ? sampling_ratio : ceil(size / pooled).
//              A sample with y < -1, y > H, x < -1 or x > W is "invalid": it contributes 0 (and still
//              counts in the average, which divides by max(grid_h * grid_w, 1)).
//   RoIWarp  : the RoI is quantized like RoIPool (round half away from zero, size = max(q2 - q1 + 1, 1))
//              and then sampled exactly like RoIAlign(aligned=True, spatial_scale=1) on the box
//              [q1, q1 + size]: start = q1 - 0.5, bin_size = size / pooled.
//   RoIPool  : start = round(c1 * scale), size = max(round(c2 * scale) - start + 1, 1),
//              bin [floor(b * size / pooled), ceil((b + 1) * size / pooled)) + start, clipped to [0, H].
//
// The bilinear weights are separable: w(y, x) = wy * wx, with the four neighbour weights
//   w1 = hy * hx (y_lo, x_lo), w2 = hy * lx (y_lo, x_hi), w3 = ly * hx (y_hi, x_lo), w4 = ly * lx (y_hi, x_hi).
#pragma once

#include <math.h>
#include <stdint.h>

#ifdef __CUDACC__
#define ROI_HD __host__ __device__
#else
#define ROI_HD
#endif

namespace roi_geometry {

// Grid sizes are clamped to this (per axis) so that grid_h * grid_w and the max-mode argmax
// (iy * grid_w + ix) always fit into int32. Only absurd boxes (> 32768 * pooled feature pixels) hit it.
constexpr int kMaxGrid = 32768;
// Quantized (RoIPool / RoIWarp) coordinates are clamped to +-2^40 so huge boxes never overflow int64.
constexpr double kMaxQuantized = 1099511627776.0;

// ---------------------------------------------------------------------------------------------------
// Small math helpers with float and double overloads (host and device).
ROI_HD inline float roi_floor(float v) { return floorf(v); }
ROI_HD inline double roi_floor(double v) { return floor(v); }
ROI_HD inline float roi_ceil(float v) { return ceilf(v); }
ROI_HD inline double roi_ceil(double v) { return ceil(v); }
// C round(): half away from zero.
ROI_HD inline float roi_round(float v) { return roundf(v); }
ROI_HD inline double roi_round(double v) { return round(v); }

template <typename T>
ROI_HD inline bool roi_isfinite(T v) {
  return v - v == T(0);  // false for NaN and +-inf
}

// ---------------------------------------------------------------------------------------------------
// RoIAlign / RoIWarp: one axis of the sampling geometry.
template <typename T>
struct AxisGeom {
  T start;   // continuous coordinate of the RoI start (pixel-centre convention of the kernel)
  T bin;     // bin size (may be <= 0 for inverted boxes with aligned=True)
  int grid;  // samples per bin along this axis (0 = no samples)
};

// Samples per bin: sampling_ratio if > 0, else ceil(size / pooled); 0 for NaN / non-positive sizes.
template <typename T>
ROI_HD inline int grid_size(T size, int64_t pooled, int64_t sampling_ratio) {
  if (sampling_ratio > 0) return sampling_ratio < kMaxGrid ? static_cast<int>(sampling_ratio) : kMaxGrid;
  T g = roi_ceil(size / static_cast<T>(pooled));
  if (!(g >= T(1))) return 0;  // also catches NaN
  if (g >= T(kMaxGrid)) return kMaxGrid;
  return static_cast<int>(g);
}

// RoIAlign axis from the box corners c1 <= c2 (x1, x2 or y1, y2) in input-image coordinates.
template <typename T>
ROI_HD inline AxisGeom<T> align_axis(T c1, T c2, T spatial_scale, bool aligned, int64_t pooled,
                                     int64_t sampling_ratio) {
  const T offset = aligned ? T(0.5) : T(0);
  const T start = c1 * spatial_scale - offset;
  const T end = c2 * spatial_scale - offset;
  T size = end - start;
  if (!aligned && size < T(1)) size = T(1);
  AxisGeom<T> g;
  g.start = start;
  g.bin = size / static_cast<T>(pooled);
  g.grid = grid_size<T>(size, pooled, sampling_ratio);
  return g;
}

// RoIPool-style quantization of one coordinate: round half away from zero, clamped to +-2^40.
template <typename T>
ROI_HD inline int64_t quantize(T c, T spatial_scale) {
  T r = roi_round(c * spatial_scale);
  if (!(r > T(-kMaxQuantized))) r = T(-kMaxQuantized);  // also catches NaN
  if (r > T(kMaxQuantized)) r = T(kMaxQuantized);
  return static_cast<int64_t>(r);
}

// Quantized extent of one axis: start = round(c1 * s), size = max(round(c2 * s) - start + 1, 1).
ROI_HD inline int64_t quantized_size(int64_t q1, int64_t q2) {
  const int64_t size = q2 - q1 + 1;
  return size > 1 ? size : 1;
}

// RoIWarp axis: quantize like RoIPool, then RoIAlign(aligned=True, scale=1) over [q1 - 0.5, q1 - 0.5 + size].
template <typename T>
ROI_HD inline AxisGeom<T> warp_axis(T c1, T c2, T spatial_scale, int64_t pooled, int64_t sampling_ratio) {
  const int64_t q1 = quantize<T>(c1, spatial_scale);
  const int64_t q2 = quantize<T>(c2, spatial_scale);
  const T size = static_cast<T>(quantized_size(q1, q2));
  AxisGeom<T> g;
  g.start = static_cast<T>(q1) - T(0.5);
  g.bin = size / static_cast<T>(pooled);
  g.grid = grid_size<T>(size, pooled, sampling_ratio);
  return g;
}

// Position of sample i (0 <= i < grid) of bin b along an axis (same operation order as torchvision).
template <typename T>
ROI_HD inline T sample_pos(const AxisGeom<T>& g, int64_t b, int64_t i) {
  return g.start + static_cast<T>(b) * g.bin + (static_cast<T>(i) + T(0.5)) * g.bin / static_cast<T>(g.grid);
}

// Is a sample coordinate inside [-1, size] (the region where bilinear interpolation is defined)?
template <typename T>
ROI_HD inline bool sample_valid(T v, int64_t size) {
  return size > 0 && v >= T(-1) && v <= static_cast<T>(size);  // NaN -> invalid
}

// Bilinear neighbours of one valid coordinate along one axis (size > 0):
// clamp at 0, snap the low neighbour at size - 1. Weight of `lo` is `wlo` (= 1 - l), of `hi` is `whi` (= l).
template <typename T>
struct AxisSample {
  int lo;
  int hi;
  T wlo;
  T whi;
};

template <typename T>
ROI_HD inline AxisSample<T> axis_sample(T v, int64_t size) {
  if (v <= T(0)) v = T(0);
  AxisSample<T> s;
  s.lo = static_cast<int>(v);
  if (s.lo >= size - 1) {
    s.lo = s.hi = static_cast<int>(size - 1);
    v = static_cast<T>(s.lo);
  } else {
    s.hi = s.lo + 1;
  }
  const T l = v - static_cast<T>(s.lo);
  s.wlo = T(1) - l;
  s.whi = l;
  return s;
}

// Full 2-D bilinear interpolation setup, exactly as torchvision's RoIAlign: returns false (all weights 0)
// for a sample outside [-1, H] x [-1, W].
template <typename T>
struct Bilinear {
  int y_lo, y_hi, x_lo, x_hi;
  T w1, w2, w3, w4;  // (y_lo, x_lo), (y_lo, x_hi), (y_hi, x_lo), (y_hi, x_hi)
};

template <typename T>
ROI_HD inline bool bilinear(T y, T x, int64_t height, int64_t width, Bilinear<T>& out) {
  if (!sample_valid<T>(y, height) || !sample_valid<T>(x, width)) {
    out.y_lo = out.y_hi = out.x_lo = out.x_hi = 0;
    out.w1 = out.w2 = out.w3 = out.w4 = T(0);
    return false;
  }
  const AxisSample<T> sy = axis_sample<T>(y, height);
  const AxisSample<T> sx = axis_sample<T>(x, width);
  out.y_lo = sy.lo;
  out.y_hi = sy.hi;
  out.x_lo = sx.lo;
  out.x_hi = sx.hi;
  out.w1 = sy.wlo * sx.wlo;
  out.w2 = sy.wlo * sx.whi;
  out.w3 = sy.whi * sx.wlo;
  out.w4 = sy.whi * sx.whi;
  return true;
}

// The value of one sample from its four neighbours' values, in one operation order for the CPU and the GPU
// kernels (with contraction off on both, the max modes then compare the same bits and pick the same samples).
template <typename T>
struct Weights {
  T w1, w2, w3, w4;
};

template <typename T>
ROI_HD inline Weights<T> weights(const AxisSample<T>& sy, const AxisSample<T>& sx) {
  return {sy.wlo * sx.wlo, sy.wlo * sx.whi, sy.whi * sx.wlo, sy.whi * sx.whi};
}

template <typename T>
ROI_HD inline T interpolate(const Weights<T>& w, T v1, T v2, T v3, T v4) {
  return w.w1 * v1 + w.w2 * v2 + w.w3 * v3 + w.w4 * v4;
}

// ---------------------------------------------------------------------------------------------------
// Per-bin aggregation rules of RoIAlign / RoIWarp, shared by every kernel.
// Divisor of the average: max(grid_h * grid_w, 1) (outside samples count, as zeros).
template <typename T>
ROI_HD inline T sample_count(int grid_h, int grid_w) {
  const int64_t c = static_cast<int64_t>(grid_h) * grid_w;
  return static_cast<T>(c > 1 ? c : 1);
}

// Max mode, one more valid sample (raster index idx): the first maximum in raster order wins (bi < 0: none yet).
template <typename T>
ROI_HD inline void max_step(T v, int idx, T* best, int* bi) {
  if (*bi < 0 || v > *best) {
    *best = v;
    *bi = idx;
  }
}

// Max mode, the invalid-zero rule: samples outside the map have value 0 and compete too; only the first of
// them (raster index fi, -1 if none) can win, over a smaller maximum or an equal later one.
template <typename T>
ROI_HD inline void max_invalid_zero(int fi, T* best, int* bi) {
  if (fi >= 0 && (*bi < 0 || T(0) > *best || (T(0) == *best && fi < *bi))) {
    *best = T(0);
    *bi = fi;
  }
}

// Sample positions along an axis are monotone in i (non-decreasing if bin >= 0, else non-increasing),
// so the valid samples of a bin form one contiguous range [*first, *last_excl). Found by bisection, so
// huge boxes (grids up to kMaxGrid) cost O(log grid) here and only the valid samples are ever visited.
template <typename T>
ROI_HD inline void valid_range(const AxisGeom<T>& g, int64_t b, int64_t size, int* first, int* last_excl) {
  *first = 0;
  *last_excl = 0;
  if (g.grid <= 0 || size <= 0 || !roi_isfinite(g.start) || !roi_isfinite(g.bin)) return;
  const bool up = g.bin >= T(0);
  const T lo_bound = T(-1), hi_bound = static_cast<T>(size);
  // first index whose position has passed the "entry" bound
  int lo = 0, hi = g.grid;
  while (lo < hi) {
    const int mid = lo + (hi - lo) / 2;
    const T v = sample_pos<T>(g, b, mid);
    if (up ? (v >= lo_bound) : (v <= hi_bound)) hi = mid; else lo = mid + 1;
  }
  const int begin = lo;
  // first index whose position has passed the "exit" bound
  lo = begin;
  hi = g.grid;
  while (lo < hi) {
    const int mid = lo + (hi - lo) / 2;
    const T v = sample_pos<T>(g, b, mid);
    if (up ? (v > hi_bound) : (v < lo_bound)) hi = mid; else lo = mid + 1;
  }
  *first = begin;
  *last_excl = lo;
}

// Index (iy * grid_w + ix) of the first invalid sample of a bin in raster order, given the valid ranges
// [y0, y1) and [x0, x1) of both axes; -1 if every sample is valid (or the grid is empty).
ROI_HD inline int first_invalid(int grid_h, int grid_w, int y0, int y1, int x0, int x1) {
  if (grid_h <= 0 || grid_w <= 0) return -1;
  const bool row0_valid = y0 == 0 && y1 > 0;
  if (!row0_valid) return 0;
  const bool all_x = x0 == 0 && x1 == grid_w;
  if (!all_x) return x0 > 0 ? 0 : x1;  // first invalid column of row 0
  if (y1 < grid_h) return y1 * grid_w;  // first invalid row
  return -1;
}

// ---------------------------------------------------------------------------------------------------
// RoIPool: quantized RoI and integer bins.
struct PoolAxis {
  int64_t start;  // round(c1 * scale)
  int64_t size;   // max(round(c2 * scale) - start + 1, 1)
};

template <typename T>
ROI_HD inline PoolAxis pool_axis(T c1, T c2, T spatial_scale) {
  PoolAxis a;
  a.start = quantize<T>(c1, spatial_scale);
  a.size = quantized_size(a.start, quantize<T>(c2, spatial_scale));
  return a;
}

// Bin b of a RoIPool axis: [*begin, *end) clipped to [0, limit]; empty if *end <= *begin.
template <typename T>
ROI_HD inline void pool_bin(const PoolAxis& a, int64_t pooled, int64_t b, int64_t limit, int64_t* begin,
                            int64_t* end) {
  const T bin = static_cast<T>(a.size) / static_cast<T>(pooled);
  int64_t s = static_cast<int64_t>(roi_floor(static_cast<T>(b) * bin)) + a.start;
  int64_t e = static_cast<int64_t>(roi_ceil(static_cast<T>(b + 1) * bin)) + a.start;
  s = s < 0 ? 0 : (s > limit ? limit : s);
  e = e < 0 ? 0 : (e > limit ? limit : e);
  *begin = s;
  *end = e;
}

}  // namespace roi_geometry
