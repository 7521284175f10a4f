// The CUDA kernels' bodies, as host/device "item" functions: one call computes one work item of a kernel.
//
// cuda/roi_ops_cuda.cu runs each item type as a thin grid-stride `__global__` loop; the CPU emulation
// (emulation/roi_ops_emulated.cpp) runs the same items serially, in ascending order, through the same host
// driver (roi_driver.h). So CPU CI executes these bodies, and compares them with the CPU kernels.
// Plain C++ besides ROI_HD/ROI_ITEM; all geometry comes from roi_geometry.h, shared with the CPU kernels.
//
// Shapes: maps [N, C, H_l, W_l] (NCHW) or [N, H_l, W_l, C] (channels_last), rois [K, 5] in the coordinate
// type T = at::opmath_type<scalar_t> (float for float/half/bfloat16, double for double), output / argmax
// [K, C, PH, PW] contiguous. Backward: grad / argmax transposed to [K, PH, PW, C], gradient accumulators
// [N, H_l, W_l, C] of T.
//
// Accumulation policy `Acc`: `Acc::add(T* p, T v)` adds v to *p; atomicAdd on the device, `*p += v` in the
// emulation. Only the atomic (default) backward items use it; the deterministic gather items own their
// pixels and use plain read-modify-write.
//
// Forward, one item per output element:
//   * NCHW: item = ((k * C + c) * PH + ph) * PW + pw.
//   * NHWC: item = ((k * PH + ph) * PW + pw) * (C / VEC) + cg, channels [cg * VEC, cg * VEC + VEC), c fastest,
//     so a warp reads consecutive channels of the same pixels (coalesced). VEC > 1 loads 16 bytes at once and
//     needs C % VEC == 0 and 16-byte aligned maps (the driver's gate).
// Backward, default path: one item per (k, ph, pw, c) of the transposed grad; atomics into the accumulator.
//   * avg: separable weights, w(y, x) = wy(y) * wx(x): the item sums the row and column weights of its bin in
//     small local tables and issues one atomic per touched pixel (9 instead of 16 for a 2x2 grid). Bins that
//     touch more than kMaxSpan pixels along an axis fall back to four atomics per sample.
//   * max: the four neighbours of the winning sample.
// Non-finite upstream gradients: every path adds g * w for every neighbour of every sample, zero weights
// included, as the CPU kernels, torchvision and autograd through the float64 reference do (inf * 0 = NaN). The
// merged forms (separable sums, merged row weights) would turn those NaNs into infs, so they serve finite g
// only; a non-finite g takes the per-sample form.
// Backward, deterministic path: no atomics. Item (level, n, y, column chunk, c) owns the pixels
// (n, y, [xa, xb), c) of its level's accumulator and gathers: it visits that level's RoIs in ascending k,
// skips those of other images or not touching its rows/columns (prefilters), and adds the contributions of
// the bins/samples in fixed (k, ph, pw, sample) order. Bitwise reproducible.
// A RoI whose batch index is outside [0, N) (or NaN) or whose level is outside [0, L) outputs 0 (argmax -1)
// and receives no gradient: the device never reads the values back to check them.
#pragma once

#include <ATen/OpMathType.h>

#include <float.h>
#include <stdint.h>
#include <string.h>

#ifndef __CUDA_ARCH__
#include <stdexcept>
#endif

#include "roi_geometry.h"

#ifdef __CUDACC__
#define ROI_ITEM __host__ __device__ __forceinline__
#define ROI_UNROLL _Pragma("unroll")
#else
#define ROI_ITEM inline
#define ROI_UNROLL
#endif

namespace roi_kernels {

using namespace roi_geometry;

constexpr int kMaxLevels = 8;  // maps per call (passed by value with the kernel arguments)
constexpr int kMaxSpan = 12;   // separable avg backward: pixels per axis of the local weight tables

// ------------------------------------------------------------------------------------------------
// Memory access
template <typename T, int N>
struct alignas(sizeof(T) * N) VecT {
  T v[N];
};

// VEC consecutive channels at p, as T. A vector load needs an address aligned to its size: the device
// faults on a misaligned one ("misaligned address"), and the emulation raises instead of reading it, so a
// broken alignment gate fails in CPU CI too.
template <typename scalar_t, typename T, int VEC>
ROI_ITEM void load_vec(const scalar_t* __restrict__ p, T (&out)[VEC]) {
  if constexpr (VEC == 1) {
    out[0] = static_cast<T>(p[0]);
  } else {
#ifdef __CUDA_ARCH__
    const VecT<scalar_t, VEC> t = *reinterpret_cast<const VecT<scalar_t, VEC>*>(p);
#else
    if (reinterpret_cast<uintptr_t>(p) % sizeof(VecT<scalar_t, VEC>) != 0) {
      throw std::runtime_error("roi_ops emulation: misaligned vector load (the GPU would fault)");
    }
    VecT<scalar_t, VEC> t;
    memcpy(&t, p, sizeof(t));
#endif
    ROI_UNROLL
    for (int i = 0; i < VEC; ++i) out[i] = static_cast<T>(t.v[i]);
  }
}

// ------------------------------------------------------------------------------------------------
// The maps a kernel reads (forward) or accumulates into (backward): one map, or the levels of a pyramid.
template <typename P>
struct Maps {
  P data[kMaxLevels];
  int64_t H[kMaxLevels], W[kMaxLevels];
  double scale[kMaxLevels];
  // Deterministic backward only: items of level l are [items[l], items[l + 1]); columns per item and column
  // chunks per row of each level.
  int64_t items[kMaxLevels + 1];
  int64_t chunk_w[kMaxLevels], n_chunks[kMaxLevels];
  int L;
};

// Level of RoI k (levels == nullptr: one map), or -1 when outside [0, L).
ROI_ITEM int roi_level(const int64_t* __restrict__ levels, int64_t k, int L) {
  if (levels == nullptr) return 0;
  const int64_t l = levels[k];
  return l >= 0 && l < L ? static_cast<int>(l) : -1;
}

// Batch index of a RoI, or -1 when it is outside [0, N) (or NaN).
template <typename T>
ROI_ITEM int64_t roi_batch(T b, int64_t N) {
  if (!(b >= T(0) && b < static_cast<T>(N))) return -1;
  return static_cast<int64_t>(b);
}

// Sampling geometry of one RoI (RoIAlign or RoIWarp) and its image (-1: invalid).
template <typename T>
struct RoiGeom {
  AxisGeom<T> y, x;
  int64_t n;
};

template <typename T>
ROI_ITEM RoiGeom<T> roi_geom(const T* __restrict__ r, T scale, int64_t PH, int64_t PW, int64_t sampling_ratio,
                             bool aligned, bool warp, int64_t N) {
  RoiGeom<T> g;
  g.n = roi_batch<T>(r[0], N);
  if (warp) {
    g.y = warp_axis<T>(r[2], r[4], scale, PH, sampling_ratio);
    g.x = warp_axis<T>(r[1], r[3], scale, PW, sampling_ratio);
  } else {
    g.y = align_axis<T>(r[2], r[4], scale, aligned, PH, sampling_ratio);
    g.x = align_axis<T>(r[1], r[3], scale, aligned, PW, sampling_ratio);
  }
  return g;
}

// ------------------------------------------------------------------------------------------------
// Prefilters of the backward items.
// Pixels [lo, hi] touched (by either bilinear neighbour) by the valid samples [i0, i1) of bin b, i0 < i1.
// axis_sample is monotone in the position and positions are monotone in i, so the ends decide.
template <typename T>
ROI_ITEM void touched_span(const AxisGeom<T>& g, int64_t b, int i0, int i1, int64_t size, int* lo, int* hi) {
  const AxisSample<T> a = axis_sample<T>(sample_pos<T>(g, b, i0), size);
  const AxisSample<T> z = axis_sample<T>(sample_pos<T>(g, b, i1 - 1), size);
  *lo = a.lo < z.lo ? a.lo : z.lo;
  *hi = a.hi > z.hi ? a.hi : z.hi;
}

// Can any sample of the RoI (all bins of one axis) touch pixels [p0, p1)? Conservative (false only when
// certainly not): touched pixels lie in [floor(min position), floor(max position) + 1], clamped to the map.
template <typename T>
ROI_ITEM bool axis_may_touch(const AxisGeom<T>& g, int64_t pooled, int64_t p0, int64_t p1) {
  if (g.grid <= 0) return false;
  const T a = g.start, b = g.start + static_cast<T>(pooled) * g.bin;
  const T lo = a < b ? a : b, hi = a < b ? b : a;
  if (static_cast<T>(p1) + T(1) < lo) return false;  // all positions > p1 + 1 (also > all pixels < p1)
  if (static_cast<T>(p0) - T(2) > hi) return false;  // all positions < p0 - 2
  return true;                                        // NaN comparisons fall through here
}

// Weight of pixel p in one axis sample (both neighbours may coincide when snapped at the border).
template <typename T>
ROI_ITEM T axis_weight(const AxisSample<T>& s, int p) {
  return (s.lo == p ? s.wlo : T(0)) + (s.hi == p ? s.whi : T(0));
}

// ------------------------------------------------------------------------------------------------
// RoIAlign / RoIWarp forward
template <typename scalar_t>
struct SampledFwdArgs {
  Maps<const scalar_t*> maps;
  const int64_t* levels;                  // [K] or nullptr
  const at::opmath_type<scalar_t>* rois;  // [K, 5] in the coordinate type
  scalar_t* out;
  int32_t* argmax;  // nullptr in avg mode
  int64_t total;    // number of items
  int64_t N, C, PH, PW, sampling_ratio;
  bool aligned, warp, max_mode;
};

template <typename scalar_t, int VEC, bool NHWC>
struct SampledForward {
  static_assert(NHWC || VEC == 1, "vectorized access needs channels_last");
  using T = at::opmath_type<scalar_t>;

  ROI_ITEM static void run(const SampledFwdArgs<scalar_t>& a, int64_t item) {
    int64_t k, c, ph, pw;
    if (NHWC) {
      const int64_t CG = a.C / VEC;
      c = item % CG * VEC;
      int64_t t = item / CG;
      pw = t % a.PW;
      t /= a.PW;
      ph = t % a.PH;
      k = t / a.PH;
    } else {
      pw = item % a.PW;
      int64_t t = item / a.PW;
      ph = t % a.PH;
      t /= a.PH;
      c = t % a.C;
      k = t / a.C;
    }
    const int level = roi_level(a.levels, k, a.maps.L);
    const int l = level < 0 ? 0 : level;
    const int64_t H = a.maps.H[l], W = a.maps.W[l];
    RoiGeom<T> g = roi_geom<T>(a.rois + k * 5, static_cast<T>(a.maps.scale[l]), a.PH, a.PW, a.sampling_ratio,
                               a.aligned, a.warp, a.N);
    if (level < 0) g.n = -1;
    int y0 = 0, y1 = 0, x0 = 0, x1 = 0;
    if (g.n >= 0) {
      valid_range<T>(g.y, ph, H, &y0, &y1);
      valid_range<T>(g.x, pw, W, &x0, &x1);
    }
    // Element offsets in the map: base of (n, c), then row and column strides.
    const int64_t base = g.n < 0 ? 0 : (NHWC ? g.n * H * W * a.C + c : (g.n * a.C + c) * H * W);
    const int64_t ys = NHWC ? W * a.C : W, xs = NHWC ? a.C : 1;
    const scalar_t* in = a.maps.data[l] + base;
    T res[VEC];
    int bi[VEC];
    ROI_UNROLL
    for (int v = 0; v < VEC; ++v) {
      res[v] = T(0);
      bi[v] = -1;
    }
    const int gw = g.x.grid;
    for (int iy = y0; iy < y1; ++iy) {
      const AxisSample<T> sy = axis_sample<T>(sample_pos<T>(g.y, ph, iy), H);
      const scalar_t* rl = in + sy.lo * ys;
      const scalar_t* rh = in + sy.hi * ys;
      for (int ix = x0; ix < x1; ++ix) {
        const AxisSample<T> sx = axis_sample<T>(sample_pos<T>(g.x, pw, ix), W);
        T v1[VEC], v2[VEC], v3[VEC], v4[VEC];
        load_vec<scalar_t, T, VEC>(rl + sx.lo * xs, v1);
        load_vec<scalar_t, T, VEC>(rl + sx.hi * xs, v2);
        load_vec<scalar_t, T, VEC>(rh + sx.lo * xs, v3);
        load_vec<scalar_t, T, VEC>(rh + sx.hi * xs, v4);
        const Weights<T> w = weights<T>(sy, sx);
        ROI_UNROLL
        for (int v = 0; v < VEC; ++v) {
          const T val = interpolate<T>(w, v1[v], v2[v], v3[v], v4[v]);
          if (a.max_mode) {
            max_step<T>(val, iy * gw + ix, &res[v], &bi[v]);
          } else {
            res[v] += val;
          }
        }
      }
    }
    const int64_t ostride = a.PH * a.PW;  // between channels of the contiguous output
    const int64_t o = ((k * a.C + c) * a.PH + ph) * a.PW + pw;
    if (a.max_mode) {
      const int fi = g.n >= 0 ? first_invalid(g.y.grid, gw, y0, y1, x0, x1) : -1;
      ROI_UNROLL
      for (int v = 0; v < VEC; ++v) {
        max_invalid_zero<T>(fi, &res[v], &bi[v]);
        a.out[o + v * ostride] = static_cast<scalar_t>(bi[v] < 0 ? T(0) : res[v]);
        a.argmax[o + v * ostride] = bi[v];
      }
    } else {
      const T count = sample_count<T>(g.y.grid, gw);
      ROI_UNROLL
      for (int v = 0; v < VEC; ++v) a.out[o + v * ostride] = static_cast<scalar_t>(res[v] / count);
    }
  }
};

// ------------------------------------------------------------------------------------------------
// RoIPool forward
template <typename scalar_t>
struct PoolFwdArgs {
  Maps<const scalar_t*> maps;
  const int64_t* levels;                  // [K] or nullptr
  const at::opmath_type<scalar_t>* rois;  // [K, 5] in the coordinate type
  scalar_t* out;
  int32_t* argmax;
  int64_t total;
  int64_t N, C, PH, PW;
};

// NCHW: item = ((k * C + c) * PH + ph) * PW + pw; NHWC: item = ((k * PH + ph) * PW + pw) * C + c.
template <typename scalar_t, bool NHWC>
struct PoolForward {
  using T = at::opmath_type<scalar_t>;

  ROI_ITEM static void run(const PoolFwdArgs<scalar_t>& a, int64_t item) {
    int64_t k, c, ph, pw;
    if (NHWC) {
      c = item % a.C;
      int64_t t = item / a.C;
      pw = t % a.PW;
      t /= a.PW;
      ph = t % a.PH;
      k = t / a.PH;
    } else {
      pw = item % a.PW;
      int64_t t = item / a.PW;
      ph = t % a.PH;
      t /= a.PH;
      c = t % a.C;
      k = t / a.C;
    }
    const T* r = a.rois + k * 5;
    const int level = roi_level(a.levels, k, a.maps.L);
    const int l = level < 0 ? 0 : level;
    const int64_t H = a.maps.H[l], W = a.maps.W[l];
    const T s = static_cast<T>(a.maps.scale[l]);
    const int64_t n = level < 0 ? -1 : roi_batch<T>(r[0], a.N);
    int64_t hs = 0, he = 0, ws = 0, we = 0;
    if (n >= 0) {
      pool_bin<T>(pool_axis<T>(r[2], r[4], s), a.PH, ph, H, &hs, &he);
      pool_bin<T>(pool_axis<T>(r[1], r[3], s), a.PW, pw, W, &ws, &we);
    }
    const bool empty = he <= hs || we <= ws;
    T best = empty ? T(0) : T(-FLT_MAX);
    int64_t bi = -1;
    if (!empty) {
      const int64_t base = NHWC ? n * H * W * a.C + c : (n * a.C + c) * H * W;
      const int64_t ys = NHWC ? W * a.C : W, xs = NHWC ? a.C : 1;
      const scalar_t* in = a.maps.data[l] + base;
      for (int64_t h = hs; h < he; ++h) {
        for (int64_t w = ws; w < we; ++w) {
          const T v = static_cast<T>(in[h * ys + w * xs]);
          if (v > best) {  // the first maximum wins
            best = v;
            bi = h * W + w;
          }
        }
      }
    }
    const int64_t o = ((k * a.C + c) * a.PH + ph) * a.PW + pw;
    a.out[o] = static_cast<scalar_t>(best);
    a.argmax[o] = static_cast<int32_t>(bi);
  }
};

// ------------------------------------------------------------------------------------------------
// Backward (shared arguments). grad / argmax are [K, PH, PW, C] contiguous; the accumulator of level l
// (maps.data[l]) is [N, H_l, W_l, C] of T.
template <typename scalar_t>
struct BwdArgs {
  Maps<at::opmath_type<scalar_t>*> maps;
  const int64_t* levels;  // [K] or nullptr
  // Deterministic path with levels: the RoIs of level l, in ascending order, are
  // by_level[level_begin[l] .. level_begin[l + 1]) (a stable sort by level), so that an item visits only its
  // own level's RoIs. nullptr without levels: RoIs 0 .. K-1.
  const int64_t* by_level;
  const int64_t* level_begin;  // [L + 1]
  const scalar_t* grad;
  const int32_t* argmax;                  // nullptr in avg mode
  const at::opmath_type<scalar_t>* rois;  // [K, 5] in the coordinate type
  int64_t total;
  int64_t K, N, C, PH, PW, sampling_ratio;
  bool aligned, warp, max_mode;
};

// Deterministic path: the (level, n, y, column chunk [xa, xb), c) that an item owns.
struct OwnedRun {
  int l;
  int64_t n, y, xa, xb, c;
};

// item -> owned run: items of level l are [items[l], items[l + 1]), ordered (n, y, chunk, c), c fastest.
template <typename P>
ROI_ITEM OwnedRun owned_run(const Maps<P>& m, int64_t C, int64_t item) {
  OwnedRun o;
  o.l = 0;
  while (o.l + 1 < m.L && item >= m.items[o.l + 1]) ++o.l;
  int64_t t = item - m.items[o.l];
  o.c = t % C;
  t /= C;
  const int64_t chunk = t % m.n_chunks[o.l];
  t /= m.n_chunks[o.l];
  o.y = t % m.H[o.l];
  o.n = t / m.H[o.l];
  o.xa = chunk * m.chunk_w[o.l];
  o.xb = o.xa + m.chunk_w[o.l] < m.W[o.l] ? o.xa + m.chunk_w[o.l] : m.W[o.l];
  return o;
}

// Deterministic path: the RoIs of level l are roi_of(a, j), j0 <= j < j1, in ascending order.
template <typename Args>
ROI_ITEM void level_rois(const Args& a, int l, int64_t* j0, int64_t* j1) {
  *j0 = a.by_level == nullptr ? 0 : a.level_begin[l];
  *j1 = a.by_level == nullptr ? a.K : a.level_begin[l + 1];
}

template <typename Args>
ROI_ITEM int64_t roi_of(const Args& a, int64_t j) {
  return a.by_level == nullptr ? j : a.by_level[j];
}

// Default path, RoIAlign / RoIWarp: item = ((k * PH + ph) * PW + pw) * C + c (the transposed grad's index).
template <typename scalar_t, typename Acc>
struct SampledBackwardAtomic {
  using T = at::opmath_type<scalar_t>;

  ROI_ITEM static void run(const BwdArgs<scalar_t>& a, int64_t item) {
    const int64_t c = item % a.C;
    int64_t t = item / a.C;
    const int64_t pw = t % a.PW;
    t /= a.PW;
    const int64_t ph = t % a.PH;
    const int64_t k = t / a.PH;
    const int l = roi_level(a.levels, k, a.maps.L);
    if (l < 0) return;
    const int64_t H = a.maps.H[l], W = a.maps.W[l];
    const RoiGeom<T> g = roi_geom<T>(a.rois + k * 5, static_cast<T>(a.maps.scale[l]), a.PH, a.PW,
                                     a.sampling_ratio, a.aligned, a.warp, a.N);
    if (g.n < 0) return;
    const T gv = static_cast<T>(a.grad[item]);
    T* acc = a.maps.data[l] + g.n * H * W * a.C + c;
    const int64_t ys = W * a.C, xs = a.C;
    if (a.max_mode) {
      max_to_neighbours(g, a.argmax[item], ph, pw, H, W, gv, acc, ys, xs);
      return;
    }
    int y0, y1, x0, x1;
    valid_range<T>(g.y, ph, H, &y0, &y1);
    valid_range<T>(g.x, pw, W, &x0, &x1);
    if (y0 >= y1 || x0 >= x1 || gv == T(0)) return;
    const T gs = gv / sample_count<T>(g.y.grid, g.x.grid);
    if (!roi_isfinite(gs) || !separable_avg(g, ph, pw, H, W, y0, y1, x0, x1, gs, acc, ys, xs)) {
      per_sample_avg(g, ph, pw, H, W, y0, y1, x0, x1, gs, acc, ys, xs);
    }
  }

  // Max: the gradient goes to the four bilinear neighbours of the winning sample (argmax idx = iy * grid_w +
  // ix), in the CPU kernel's order; coinciding neighbours (snapped at the border) and zero weights too.
  ROI_ITEM static void max_to_neighbours(const RoiGeom<T>& g, int idx, int64_t ph, int64_t pw, int64_t H, int64_t W,
                                         T gv, T* acc, int64_t ys, int64_t xs) {
    const int gh = g.y.grid, gw = g.x.grid;
    if (idx < 0 || gw <= 0 || idx >= static_cast<int64_t>(gh) * gw) return;
    const T py = sample_pos<T>(g.y, ph, idx / gw), px = sample_pos<T>(g.x, pw, idx % gw);
    if (!sample_valid<T>(py, H) || !sample_valid<T>(px, W)) return;  // a constant 0 won
    const AxisSample<T> sy = axis_sample<T>(py, H), sx = axis_sample<T>(px, W);
    const Weights<T> w = weights<T>(sy, sx);
    Acc::add(acc + sy.lo * ys + sx.lo * xs, gv * w.w1);
    Acc::add(acc + sy.lo * ys + sx.hi * xs, gv * w.w2);
    Acc::add(acc + sy.hi * ys + sx.lo * xs, gv * w.w3);
    Acc::add(acc + sy.hi * ys + sx.hi * xs, gv * w.w4);
  }

  // Avg, separable: pixel (r, s) gets gs * (sum of row weights at r) * (sum of column weights at s).
  // Returns false (nothing added) when the bin touches more than kMaxSpan pixels along an axis.
  ROI_ITEM static bool separable_avg(const RoiGeom<T>& g, int64_t ph, int64_t pw, int64_t H, int64_t W, int y0,
                                     int y1, int x0, int x1, T gs, T* acc, int64_t ys, int64_t xs) {
    int rlo, rhi, clo, chi;
    touched_span<T>(g.y, ph, y0, y1, H, &rlo, &rhi);
    touched_span<T>(g.x, pw, x0, x1, W, &clo, &chi);
    if (rhi - rlo >= kMaxSpan || chi - clo >= kMaxSpan) return false;
    T wy[kMaxSpan], wx[kMaxSpan];
    ROI_UNROLL
    for (int i = 0; i < kMaxSpan; ++i) wy[i] = wx[i] = T(0);
    // The spans come from the end samples (positions are monotone); the index checks only guard the local
    // tables should a position ever round differently (then the per-sample path is used).
    for (int iy = y0; iy < y1; ++iy) {
      const AxisSample<T> s = axis_sample<T>(sample_pos<T>(g.y, ph, iy), H);
      if (s.lo < rlo || s.hi > rhi) return false;
      wy[s.lo - rlo] += s.wlo;
      wy[s.hi - rlo] += s.whi;
    }
    for (int ix = x0; ix < x1; ++ix) {
      const AxisSample<T> s = axis_sample<T>(sample_pos<T>(g.x, pw, ix), W);
      if (s.lo < clo || s.hi > chi) return false;
      wx[s.lo - clo] += s.wlo;
      wx[s.hi - clo] += s.whi;
    }
    for (int r = 0; r <= rhi - rlo; ++r) {
      if (wy[r] == T(0)) continue;
      const T gr = gs * wy[r];
      T* row = acc + (rlo + r) * ys;
      for (int q = 0; q <= chi - clo; ++q) {
        if (wx[q] == T(0)) continue;
        Acc::add(row + (clo + q) * xs, gr * wx[q]);
      }
    }
    return true;
  }

  // Avg, large bins: four atomics per sample.
  ROI_ITEM static void per_sample_avg(const RoiGeom<T>& g, int64_t ph, int64_t pw, int64_t H, int64_t W, int y0,
                                      int y1, int x0, int x1, T gs, T* acc, int64_t ys, int64_t xs) {
    for (int iy = y0; iy < y1; ++iy) {
      const AxisSample<T> sy = axis_sample<T>(sample_pos<T>(g.y, ph, iy), H);
      T* rl = acc + sy.lo * ys;
      T* rh = acc + sy.hi * ys;
      for (int ix = x0; ix < x1; ++ix) {
        const AxisSample<T> sx = axis_sample<T>(sample_pos<T>(g.x, pw, ix), W);
        const Weights<T> w = weights<T>(sy, sx);
        Acc::add(rl + sx.lo * xs, gs * w.w1);
        Acc::add(rl + sx.hi * xs, gs * w.w2);
        Acc::add(rh + sx.lo * xs, gs * w.w3);
        Acc::add(rh + sx.hi * xs, gs * w.w4);
      }
    }
  }
};

// Deterministic path, RoIAlign / RoIWarp: item owns (level, n, y, [xa, xb), c); gathers in RoI order.
template <typename scalar_t>
struct SampledBackwardGather {
  using T = at::opmath_type<scalar_t>;

  ROI_ITEM static void run(const BwdArgs<scalar_t>& a, int64_t item) {
    const OwnedRun o = owned_run(a.maps, a.C, item);
    const int64_t H = a.maps.H[o.l], W = a.maps.W[o.l];
    const int y = static_cast<int>(o.y), xa = static_cast<int>(o.xa), xb = static_cast<int>(o.xb);
    T* acc = a.maps.data[o.l] + ((o.n * H + y) * W) * a.C + o.c;  // pixel x of the owned row is acc[x * C]
    const int64_t PP = a.PH * a.PW;
    int64_t j0, j1;
    level_rois(a, o.l, &j0, &j1);
    for (int64_t j = j0; j < j1; ++j) {
      const int64_t k = roi_of(a, j);
      const RoiGeom<T> g = roi_geom<T>(a.rois + k * 5, static_cast<T>(a.maps.scale[o.l]), a.PH, a.PW,
                                       a.sampling_ratio, a.aligned, a.warp, a.N);
      if (g.n != o.n) continue;
      if (!axis_may_touch<T>(g.y, a.PH, y, y + 1) || !axis_may_touch<T>(g.x, a.PW, xa, xb)) continue;
      const scalar_t* gk = a.grad + k * PP * a.C + o.c;
      const int32_t* ak = a.max_mode ? a.argmax + k * PP * a.C + o.c : nullptr;
      for (int64_t ph = 0; ph < a.PH; ++ph) {
        int y0, y1;
        valid_range<T>(g.y, ph, H, &y0, &y1);
        if (y0 >= y1) continue;
        int rlo, rhi;
        touched_span<T>(g.y, ph, y0, y1, H, &rlo, &rhi);
        // Spans only prefilter (one pixel of slack); the per-sample tests are exact.
        if (y < rlo - 1 || y > rhi + 1) continue;
        if (a.max_mode) {
          gather_max(a, g, gk, ak, ph, y0, y1, H, W, y, xa, xb, acc);
        } else {
          gather_avg(a, g, gk, ph, y0, y1, H, W, y, xa, xb, acc);
        }
      }
    }
  }

  // Max: the owned pixels among the neighbours of each bin's winning sample.
  ROI_ITEM static void gather_max(const BwdArgs<scalar_t>& a, const RoiGeom<T>& g, const scalar_t* gk,
                                  const int32_t* ak, int64_t ph, int y0, int y1, int64_t H, int64_t W, int y, int xa,
                                  int xb, T* acc) {
    const int gw = g.x.grid;
    const int64_t cnt = static_cast<int64_t>(g.y.grid) * gw;
    for (int64_t pw = 0; pw < a.PW; ++pw) {
      const int idx = ak[(ph * a.PW + pw) * a.C];
      if (idx < 0 || gw <= 0 || idx >= cnt) continue;
      const int iy = idx / gw, ix = idx % gw;
      if (iy < y0 || iy >= y1) continue;  // outside the map: a constant 0 won
      const AxisSample<T> sy = axis_sample<T>(sample_pos<T>(g.y, ph, iy), H);
      if (sy.lo != y && sy.hi != y) continue;
      const T px = sample_pos<T>(g.x, pw, ix);
      if (!sample_valid<T>(px, W)) continue;
      const AxisSample<T> sx = axis_sample<T>(px, W);
      if (sx.hi < xa || sx.lo >= xb) continue;
      const T gv = static_cast<T>(gk[(ph * a.PW + pw) * a.C]);
      // The CPU kernel's terms in its order: (lo, lo), (lo, hi), (hi, lo), (hi, hi), rows that are y only.
      if (sy.lo == y) add_row(gv, sy.wlo, sx, xa, xb, acc, a.C);
      if (sy.hi == y) add_row(gv, sy.whi, sx, xa, xb, acc, a.C);
    }
  }

  // One row neighbour's two terms, g * (wy * wx), at the owned columns [xa, xb).
  ROI_ITEM static void add_row(T gv, T wy, const AxisSample<T>& sx, int xa, int xb, T* acc, int64_t C) {
    if (sx.lo >= xa && sx.lo < xb) acc[sx.lo * C] += gv * (wy * sx.wlo);
    if (sx.hi >= xa && sx.hi < xb) acc[sx.hi * C] += gv * (wy * sx.whi);
  }

  // Avg: the total weight of pixel row y in this bin row (separable weights), then each sample's columns.
  // A non-finite g adds the per-sample terms instead (see "Non-finite upstream gradients" at the top).
  ROI_ITEM static void gather_avg(const BwdArgs<scalar_t>& a, const RoiGeom<T>& g, const scalar_t* gk, int64_t ph,
                                  int y0, int y1, int64_t H, int64_t W, int y, int xa, int xb, T* acc) {
    T wy = T(0);
    bool touched = false;  // row y is a neighbour of some sample (perhaps with weight 0)
    for (int iy = y0; iy < y1; ++iy) {
      const AxisSample<T> sy = axis_sample<T>(sample_pos<T>(g.y, ph, iy), H);
      touched = touched || sy.lo == y || sy.hi == y;
      wy += axis_weight<T>(sy, y);
    }
    if (!touched) return;
    const T count = sample_count<T>(g.y.grid, g.x.grid);
    for (int64_t pw = 0; pw < a.PW; ++pw) {
      int x0, x1;
      valid_range<T>(g.x, pw, W, &x0, &x1);
      if (x0 >= x1) continue;
      int clo, chi;
      touched_span<T>(g.x, pw, x0, x1, W, &clo, &chi);
      if (chi + 1 < xa || clo - 1 >= xb) continue;
      const T gv = static_cast<T>(gk[(ph * a.PW + pw) * a.C]);
      if (gv == T(0)) continue;
      if (!roi_isfinite(gv)) {
        for (int iy = y0; iy < y1; ++iy) {
          const AxisSample<T> sy = axis_sample<T>(sample_pos<T>(g.y, ph, iy), H);
          for (int ix = x0; ix < x1; ++ix) {
            const AxisSample<T> sx = axis_sample<T>(sample_pos<T>(g.x, pw, ix), W);
            if (sy.lo == y) add_row(gv / count, sy.wlo, sx, xa, xb, acc, a.C);
            if (sy.hi == y) add_row(gv / count, sy.whi, sx, xa, xb, acc, a.C);
          }
        }
        continue;
      }
      if (wy == T(0)) continue;
      const T gr = gv * wy / count;
      for (int ix = x0; ix < x1; ++ix) {
        const AxisSample<T> sx = axis_sample<T>(sample_pos<T>(g.x, pw, ix), W);
        if (sx.lo >= xa && sx.lo < xb) acc[sx.lo * a.C] += gr * sx.wlo;
        if (sx.hi >= xa && sx.hi < xb) acc[sx.hi * a.C] += gr * sx.whi;
      }
    }
  }
};

// RoIPool backward, default path: item = ((k * PH + ph) * PW + pw) * C + c; one atomic at the argmax pixel.
template <typename scalar_t, typename Acc>
struct PoolBackwardAtomic {
  using T = at::opmath_type<scalar_t>;

  ROI_ITEM static void run(const BwdArgs<scalar_t>& a, int64_t item) {
    const int idx = a.argmax[item];
    const int64_t c = item % a.C;
    const int64_t k = item / (a.C * a.PH * a.PW);
    const int l = roi_level(a.levels, k, a.maps.L);
    if (l < 0) return;
    const int64_t HW = a.maps.H[l] * a.maps.W[l];
    if (idx < 0 || idx >= HW) return;
    const int64_t n = roi_batch<T>(a.rois[k * 5], a.N);
    if (n < 0) return;
    Acc::add(a.maps.data[l] + (n * HW + idx) * a.C + c, static_cast<T>(a.grad[item]));
  }
};

// RoIPool backward, deterministic path: item owns (level, n, y, [xa, xb), c); gathers in RoI order.
template <typename scalar_t>
struct PoolBackwardGather {
  using T = at::opmath_type<scalar_t>;

  ROI_ITEM static void run(const BwdArgs<scalar_t>& a, int64_t item) {
    const OwnedRun o = owned_run(a.maps, a.C, item);
    const int64_t y = o.y, xa = o.xa, xb = o.xb, H = a.maps.H[o.l], W = a.maps.W[o.l];
    T* acc = a.maps.data[o.l] + ((o.n * H + y) * W) * a.C + o.c;
    const int64_t PP = a.PH * a.PW;
    const T s = static_cast<T>(a.maps.scale[o.l]);
    int64_t j0, j1;
    level_rois(a, o.l, &j0, &j1);
    for (int64_t j = j0; j < j1; ++j) {
      const int64_t k = roi_of(a, j);
      const T* r = a.rois + k * 5;
      if (roi_batch<T>(r[0], a.N) != o.n) continue;
      const PoolAxis ay = pool_axis<T>(r[2], r[4], s);
      // Bins lie in [start, start + size], the end inclusive since ceil((b + 1) * bin) may round up.
      if (y < ay.start || y > ay.start + ay.size) continue;
      const PoolAxis ax = pool_axis<T>(r[1], r[3], s);
      if (xb <= ax.start || xa > ax.start + ax.size) continue;
      const scalar_t* gk = a.grad + k * PP * a.C + o.c;
      const int32_t* ak = a.argmax + k * PP * a.C + o.c;
      for (int64_t ph = 0; ph < a.PH; ++ph) {
        int64_t hs, he;
        pool_bin<T>(ay, a.PH, ph, H, &hs, &he);
        if (y < hs || y >= he) continue;
        for (int64_t pw = 0; pw < a.PW; ++pw) {
          const int idx = ak[(ph * a.PW + pw) * a.C];
          if (idx < 0 || idx / W != y) continue;
          const int64_t x = idx % W;
          if (x < xa || x >= xb) continue;
          acc[x * a.C] += static_cast<T>(gk[(ph * a.PW + pw) * a.C]);
        }
      }
    }
  }
};

}  // namespace roi_kernels
