// roi_ops CUDA kernels: RoIAlign, RoIWarp and RoIPool, forward and backward.
// Registered with TORCH_LIBRARY_IMPL(roi_ops, CUDA, m); the schemas live in ../roi_ops.cpp.
//
// Shapes: input [N, C, H, W], rois [K, 5] = (batch_idx, x1, y1, x2, y2) in the input dtype or in the
//         coordinate type (float32 for half/bfloat16 input); the host converts them to T before launching,
//         output / argmax / grad [K, C, PH, PW] (contiguous), grad_input [N, C, H, W] (contiguous).
// multilevel_roi_*: a list of up to kMaxLevels maps (one layout for all) and levels Int64[K]; RoI k reads
//         map levels[k]. Every kernel takes the maps as a `Maps` table; the single-level ops pass one map.
//         Forward and backward are one launch each for all levels, with no host sync.
// All geometry (boxes, sample positions, bilinear weights, RoIPool bins) comes from ../roi_geometry.h,
// the same code the CPU kernels use. Math runs in T = at::opmath_type<scalar_t> (float for
// float/half/bfloat16, double for double); results are stored in the input dtype.
//
// Forward: one thread per output element.
//   * NCHW input: thread order (k, c, ph, pw).
//   * channels_last input: thread order (k, ph, pw, c-group), c fastest, so a warp reads consecutive
//     channels of the same pixels (coalesced); with C % VEC == 0 each thread handles VEC channels
//     (16-byte vector loads) and computes the sampling geometry once for all of them.
//   * other layouts are made contiguous first.
// Backward: both paths accumulate into a zeroed T buffer laid out [N, H, W, C] and finish with one
//   copy_ into the contiguous input-dtype grad_input. grad / argmax are first transposed to
//   [K, PH, PW, C] (they are small) so that channel-fastest threads read them coalesced.
//   * default path: one thread per (k, ph, pw, c) scatters with float atomics (adjacent lanes hit
//     adjacent addresses). RoIAlign/RoIWarp avg mode uses the separability of the bilinear weights,
//     w(y, x) = wy(y) * wx(x): the thread first sums the row weights and column weights of its bin
//     (small local tables), then issues one atomic per touched pixel instead of four per sample
//     (e.g. 9 instead of 16 for a 2x2 grid, 25 instead of 64 for 4x4).
//   * deterministic path (at::globalContext().deterministicAlgorithms()): no atomics. One thread per
//     (n, y, column chunk, c) owns that run of grad_input pixels and gathers: it visits the RoIs in
//     ascending k, skips those of other images or not touching its rows/columns, and adds the
//     contributions of the bins/samples in fixed (k, ph, pw, sample) order with plain read-modify-write.
//     With levels, a device-side stable sort by level lets each thread visit only its level's RoIs.
//     Bitwise reproducible; extra memory is only the N*C*H*W buffer (no K*C*H*W blow-up).
// RoI batch indices outside [0, N) are not validated on the device (that needs a host sync, which the
//   CPU op can afford); such RoIs produce 0 (argmax -1) and receive no gradient.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cfloat>
#include <cstdint>
#include <tuple>

#include "../host_checks.h"
#include "../roi_geometry.h"

namespace roi_ops_cuda {
namespace {

using at::Tensor;
using namespace roi_geometry;
using roi_ops::op_kind;
using roi_ops::OpKind;

constexpr int kThreads = 256;
// Separable avg backward: per-axis tables of touched pixels (larger spans fall back to per-sample atomics).
constexpr int kMaxSpan = 12;

// ------------------------------------------------------------------------------------------------
// Small device helpers.
template <typename T, int N>
struct alignas(sizeof(T) * N) VecT {
  T v[N];
};

template <typename scalar_t, typename T, int VEC>
__device__ __forceinline__ void load_vec(const scalar_t* __restrict__ p, T (&out)[VEC]) {
  if constexpr (VEC == 1) {
    out[0] = static_cast<T>(p[0]);
  } else {
    const VecT<scalar_t, VEC> t = *reinterpret_cast<const VecT<scalar_t, VEC>*>(p);
#pragma unroll
    for (int i = 0; i < VEC; ++i) out[i] = static_cast<T>(t.v[i]);
  }
}

__host__ __device__ __forceinline__ int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Batch index of a RoI, or -1 when it is outside [0, N) (or NaN).
template <typename T>
__device__ __forceinline__ int64_t roi_batch(T b, int64_t N) {
  if (!(b >= T(0) && b < static_cast<T>(N))) return -1;
  return static_cast<int64_t>(b);
}

// Sampling geometry of one RoI (RoIAlign or RoIWarp).
template <typename T>
struct RoiGeom {
  AxisGeom<T> y, x;
  int64_t n;
};

template <typename T>
__device__ __forceinline__ RoiGeom<T> roi_geom(const T* __restrict__ r, T scale, int64_t PH, int64_t PW,
                                               int64_t sampling_ratio, bool aligned, bool warp, int64_t N) {
  RoiGeom<T> g;
  g.n = roi_batch<T>(r[0], N);
  const T x1 = r[1], y1 = r[2];
  const T x2 = r[3], y2 = r[4];
  if (warp) {
    g.y = warp_axis<T>(y1, y2, scale, PH, sampling_ratio);
    g.x = warp_axis<T>(x1, x2, scale, PW, sampling_ratio);
  } else {
    g.y = align_axis<T>(y1, y2, scale, aligned, PH, sampling_ratio);
    g.x = align_axis<T>(x1, x2, scale, aligned, PW, sampling_ratio);
  }
  return g;
}

// Pixels [lo, hi] touched (by either bilinear neighbour) by the valid samples [i0, i1) of bin b, i0 < i1.
// axis_sample is monotone in the position and positions are monotone in i, so the ends decide.
template <typename T>
__device__ __forceinline__ void touched_span(const AxisGeom<T>& g, int64_t b, int i0, int i1, int64_t size,
                                             int* lo, int* hi) {
  const AxisSample<T> a = axis_sample<T>(sample_pos<T>(g, b, i0), size);
  const AxisSample<T> z = axis_sample<T>(sample_pos<T>(g, b, i1 - 1), size);
  *lo = a.lo < z.lo ? a.lo : z.lo;
  *hi = a.hi > z.hi ? a.hi : z.hi;
}

// Can any sample of the RoI (all bins of one axis) touch pixels [p0, p1)? Conservative (false only when
// certainly not): touched pixels lie in [floor(min position), floor(max position) + 1], clamped to the map.
template <typename T>
__device__ __forceinline__ bool axis_may_touch(const AxisGeom<T>& g, int64_t pooled, int64_t p0, int64_t p1) {
  if (g.grid <= 0) return false;
  const T a = g.start, b = g.start + static_cast<T>(pooled) * g.bin;
  const T lo = a < b ? a : b, hi = a < b ? b : a;
  if (static_cast<T>(p1) + T(1) < lo) return false;      // all positions > p1 + 1 (also > all pixels < p1)
  if (static_cast<T>(p0) - T(2) > hi) return false;      // all positions < p0 - 2
  return true;                                            // NaN comparisons fall through here
}

// Weight of pixel p in one axis sample (both neighbours may coincide when snapped at the border).
template <typename T>
__device__ __forceinline__ T axis_weight(const AxisSample<T>& s, int p) {
  return (s.lo == p ? s.wlo : T(0)) + (s.hi == p ? s.whi : T(0));
}

template <typename T>
__device__ __forceinline__ void atomic_add(T* p, T v) {
  atomicAdd(p, v);  // float and double only (T is the opmath type)
}

// ------------------------------------------------------------------------------------------------
// The feature maps a kernel reads (forward) or accumulates into (backward): one map, or the levels of a
// pyramid, passed by value with the kernel arguments. RoI k uses level levels[k] (levels == nullptr: all
// RoIs use level 0); a level outside [0, L) is treated like a bad batch index (output 0, no gradient).
constexpr int kMaxLevels = 8;

template <typename P>
struct Maps {
  P data[kMaxLevels];
  int64_t H[kMaxLevels], W[kMaxLevels];
  double scale[kMaxLevels];
  // Deterministic backward only: work items of level l are [items[l], items[l + 1]); columns per thread
  // and column chunks per row of each level.
  int64_t items[kMaxLevels + 1];
  int64_t chunk_w[kMaxLevels], n_chunks[kMaxLevels];
  int L;
};

__device__ __forceinline__ int roi_level(const int64_t* __restrict__ levels, int64_t k, int L) {
  if (levels == nullptr) return 0;
  const int64_t l = levels[k];
  return l >= 0 && l < L ? static_cast<int>(l) : -1;
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
  int64_t total;    // number of threads' work items
  int64_t N, C, PH, PW, sampling_ratio;
  bool aligned, warp, max_mode;
};

// NHWC=false: item = ((k * C + c) * PH + ph) * PW + pw, VEC must be 1.
// NHWC=true : item = ((k * PH + ph) * PW + pw) * (C / VEC) + cg, channels [cg * VEC, cg * VEC + VEC).
template <typename scalar_t, int VEC, bool NHWC>
__global__ void __launch_bounds__(kThreads) sampled_forward_kernel(const SampledFwdArgs<scalar_t> a) {
  using T = at::opmath_type<scalar_t>;
  static_assert(NHWC || VEC == 1, "vectorized access needs channels_last");
  const int64_t CG = a.C / VEC;
  for (int64_t item = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; item < a.total;
       item += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int64_t k, c, ph, pw;
    if (NHWC) {
      const int64_t cg = item % CG;
      int64_t t = item / CG;
      pw = t % a.PW;
      t /= a.PW;
      ph = t % a.PH;
      k = t / a.PH;
      c = cg * VEC;
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
    // Strides of the input (element offsets): base of (n, c), row and column.
    int64_t base, ys, xs;
    if (NHWC) {
      base = g.n * H * W * a.C + c;
      ys = W * a.C;
      xs = a.C;
    } else {
      base = (g.n * a.C + c) * H * W;
      ys = W;
      xs = 1;
    }
    const scalar_t* in = a.maps.data[l] + (g.n >= 0 ? base : 0);
    T res[VEC];
    int bi[VEC];
#pragma unroll
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
        const T w1 = sy.wlo * sx.wlo, w2 = sy.wlo * sx.whi, w3 = sy.whi * sx.wlo, w4 = sy.whi * sx.whi;
#pragma unroll
        for (int v = 0; v < VEC; ++v) {
          const T val = w1 * v1[v] + w2 * v2[v] + w3 * v3[v] + w4 * v4[v];
          if (a.max_mode) {
            if (bi[v] < 0 || val > res[v]) {  // first maximum in raster order wins
              res[v] = val;
              bi[v] = iy * gw + ix;
            }
          } else {
            res[v] += val;
          }
        }
      }
    }
    const int64_t ostride = a.PH * a.PW;  // between channels of the contiguous output
    const int64_t o = ((k * a.C + c) * a.PH + ph) * a.PW + pw;
    if (a.max_mode) {
      // Samples outside the map have value 0 and compete too (only the first of them can win).
      const int fi = g.n >= 0 ? first_invalid(g.y.grid, gw, y0, y1, x0, x1) : -1;
#pragma unroll
      for (int v = 0; v < VEC; ++v) {
        if (fi >= 0 && (bi[v] < 0 || T(0) > res[v] || (T(0) == res[v] && fi < bi[v]))) {
          res[v] = T(0);
          bi[v] = fi;
        }
        a.out[o + v * ostride] = static_cast<scalar_t>(bi[v] < 0 ? T(0) : res[v]);
        a.argmax[o + v * ostride] = bi[v];
      }
    } else {
      const int64_t cnt = static_cast<int64_t>(g.y.grid) * gw;
      const T count = static_cast<T>(cnt > 1 ? cnt : 1);
#pragma unroll
      for (int v = 0; v < VEC; ++v) a.out[o + v * ostride] = static_cast<scalar_t>(res[v] / count);
    }
  }
}

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

template <typename scalar_t, bool NHWC>
__global__ void __launch_bounds__(kThreads) pool_forward_kernel(const PoolFwdArgs<scalar_t> a) {
  using T = at::opmath_type<scalar_t>;
  for (int64_t item = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; item < a.total;
       item += static_cast<int64_t>(gridDim.x) * blockDim.x) {
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
      const PoolAxis ay = pool_axis<T>(r[2], r[4], s);
      const PoolAxis ax = pool_axis<T>(r[1], r[3], s);
      pool_bin<T>(ay, a.PH, ph, H, &hs, &he);
      pool_bin<T>(ax, a.PW, pw, W, &ws, &we);
    }
    const bool empty = he <= hs || we <= ws;
    T best = empty ? T(0) : T(-FLT_MAX);
    int64_t bi = -1;
    if (!empty) {
      int64_t base, ys, xs;
      if (NHWC) {
        base = n * H * W * a.C + c;
        ys = W * a.C;
        xs = a.C;
      } else {
        base = (n * a.C + c) * H * W;
        ys = W;
        xs = 1;
      }
      const scalar_t* in = a.maps.data[l] + base;
      for (int64_t h = hs; h < he; ++h) {
        for (int64_t w = ws; w < we; ++w) {
          const T v = static_cast<T>(in[h * ys + w * xs]);
          if (v > best) {
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
}

// ------------------------------------------------------------------------------------------------
// Backward (shared arguments). grad / argmax are [K, PH, PW, C] contiguous; the accumulator of level l
// (maps.data[l]) is [N, H_l, W_l, C] of T.
template <typename scalar_t>
struct BwdArgs {
  Maps<at::opmath_type<scalar_t>*> maps;
  const int64_t* levels;  // [K] or nullptr
  // Deterministic path with levels: the RoIs of level l, in ascending order, are
  // by_level[level_begin[l] .. level_begin[l + 1]) (a stable sort by level), so that a thread visits only
  // its own level's RoIs. nullptr without levels: RoIs 0 .. K-1.
  const int64_t* by_level;
  const int64_t* level_begin;  // [L + 1]
  const scalar_t* grad;
  const int32_t* argmax;  // nullptr in avg mode
  const at::opmath_type<scalar_t>* rois;  // [K, 5] in the coordinate type
  int64_t total;
  int64_t K, N, C, PH, PW, sampling_ratio;
  bool aligned, warp, max_mode;
};

// Deterministic path: the (level, n, y, column chunk, c) that work item `item` owns.
struct OwnedRun {
  int l;
  int64_t n, y, xa, xb, c;
};

// Deterministic path: RoIs j0 <= j < j1 of level l are roi_of(a, j), in ascending order.
template <typename Args>
__device__ __forceinline__ void level_rois(const Args& a, int l, int64_t* j0, int64_t* j1) {
  *j0 = a.by_level == nullptr ? 0 : a.level_begin[l];
  *j1 = a.by_level == nullptr ? a.K : a.level_begin[l + 1];
}

template <typename Args>
__device__ __forceinline__ int64_t roi_of(const Args& a, int64_t j) {
  return a.by_level == nullptr ? j : a.by_level[j];
}

template <typename P>
__device__ __forceinline__ OwnedRun owned_run(const Maps<P>& m, int64_t C, int64_t item) {
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

// Default path, RoIAlign / RoIWarp: one thread per (k, ph, pw, c), atomics into acc.
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) sampled_backward_atomic_kernel(const BwdArgs<scalar_t> a) {
  using T = at::opmath_type<scalar_t>;
  for (int64_t item = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; item < a.total;
       item += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t c = item % a.C;
    int64_t t = item / a.C;
    const int64_t pw = t % a.PW;
    t /= a.PW;
    const int64_t ph = t % a.PH;
    const int64_t k = t / a.PH;
    const int l = roi_level(a.levels, k, a.maps.L);
    if (l < 0) continue;
    const int64_t H = a.maps.H[l], W = a.maps.W[l];
    const RoiGeom<T> g = roi_geom<T>(a.rois + k * 5, static_cast<T>(a.maps.scale[l]), a.PH, a.PW,
                                     a.sampling_ratio, a.aligned, a.warp, a.N);
    if (g.n < 0) continue;
    const T gv = static_cast<T>(a.grad[item]);
    T* acc = a.maps.data[l] + g.n * H * W * a.C + c;
    const int64_t ys = W * a.C, xs = a.C;
    if (a.max_mode) {
      const int idx = a.argmax[item];
      const int gh = g.y.grid, gw = g.x.grid;
      if (idx < 0 || gw <= 0 || idx >= static_cast<int64_t>(gh) * gw) continue;
      const T py = sample_pos<T>(g.y, ph, idx / gw), px = sample_pos<T>(g.x, pw, idx % gw);
      if (!sample_valid<T>(py, H) || !sample_valid<T>(px, W)) continue;  // a constant 0 won
      const AxisSample<T> sy = axis_sample<T>(py, H), sx = axis_sample<T>(px, W);
      // Merge coinciding neighbours (snapped at the border) and skip zero weights: <= 4 atomics.
      const int nr = sy.hi != sy.lo ? 2 : 1, nc = sx.hi != sx.lo ? 2 : 1;
      const int rows[2] = {sy.lo, sy.hi}, cols[2] = {sx.lo, sx.hi};
      const T wr[2] = {nr == 2 ? sy.wlo : sy.wlo + sy.whi, sy.whi};
      const T wc[2] = {nc == 2 ? sx.wlo : sx.wlo + sx.whi, sx.whi};
      for (int i = 0; i < nr; ++i) {
        if (wr[i] == T(0)) continue;
        for (int j = 0; j < nc; ++j) {
          if (wc[j] == T(0)) continue;
          atomic_add(acc + rows[i] * ys + cols[j] * xs, gv * (wr[i] * wc[j]));
        }
      }
      continue;
    }
    int y0, y1, x0, x1;
    valid_range<T>(g.y, ph, H, &y0, &y1);
    valid_range<T>(g.x, pw, W, &x0, &x1);
    if (y0 >= y1 || x0 >= x1 || gv == T(0)) continue;
    const int64_t cnt = static_cast<int64_t>(g.y.grid) * g.x.grid;
    const T gs = gv / static_cast<T>(cnt > 1 ? cnt : 1);
    int rlo, rhi, clo, chi;
    touched_span<T>(g.y, ph, y0, y1, H, &rlo, &rhi);
    touched_span<T>(g.x, pw, x0, x1, W, &clo, &chi);
    bool separable = rhi - rlo < kMaxSpan && chi - clo < kMaxSpan;
    T wy[kMaxSpan], wx[kMaxSpan];
    if (separable) {
      // Contribution to pixel (r, s) = gs * (sum of row weights at r) * (sum of column weights at s).
#pragma unroll
      for (int i = 0; i < kMaxSpan; ++i) wy[i] = wx[i] = T(0);
      // The spans come from the end samples (positions are monotone); the index checks only guard the
      // local tables should a position ever round differently (then the per-sample path below is used).
      for (int iy = y0; iy < y1 && separable; ++iy) {
        const AxisSample<T> s = axis_sample<T>(sample_pos<T>(g.y, ph, iy), H);
        if (s.lo < rlo || s.hi > rhi) {
          separable = false;
          break;
        }
        wy[s.lo - rlo] += s.wlo;
        wy[s.hi - rlo] += s.whi;
      }
      for (int ix = x0; ix < x1 && separable; ++ix) {
        const AxisSample<T> s = axis_sample<T>(sample_pos<T>(g.x, pw, ix), W);
        if (s.lo < clo || s.hi > chi) {
          separable = false;
          break;
        }
        wx[s.lo - clo] += s.wlo;
        wx[s.hi - clo] += s.whi;
      }
    }
    if (separable) {
      for (int r = 0; r <= rhi - rlo; ++r) {
        if (wy[r] == T(0)) continue;
        const T gr = gs * wy[r];
        T* row = acc + (rlo + r) * ys;
        for (int q = 0; q <= chi - clo; ++q) {
          if (wx[q] == T(0)) continue;
          atomic_add(row + (clo + q) * xs, gr * wx[q]);
        }
      }
    } else {
      // Large bins: four atomics per sample.
      for (int iy = y0; iy < y1; ++iy) {
        const AxisSample<T> sy = axis_sample<T>(sample_pos<T>(g.y, ph, iy), H);
        T* rl = acc + sy.lo * ys;
        T* rh = acc + sy.hi * ys;
        for (int ix = x0; ix < x1; ++ix) {
          const AxisSample<T> sx = axis_sample<T>(sample_pos<T>(g.x, pw, ix), W);
          atomic_add(rl + sx.lo * xs, gs * (sy.wlo * sx.wlo));
          atomic_add(rl + sx.hi * xs, gs * (sy.wlo * sx.whi));
          atomic_add(rh + sx.lo * xs, gs * (sy.whi * sx.wlo));
          atomic_add(rh + sx.hi * xs, gs * (sy.whi * sx.whi));
        }
      }
    }
  }
}

// Deterministic path, RoIAlign / RoIWarp: one thread per (n, y, column chunk, c) owning the pixels
// (n, y, [xa, xb), c) of acc; gathers over RoIs in ascending order, no atomics.
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) sampled_backward_gather_kernel(const BwdArgs<scalar_t> a) {
  using T = at::opmath_type<scalar_t>;
  for (int64_t item = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; item < a.total;
       item += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const OwnedRun o = owned_run(a.maps, a.C, item);
    const int64_t c = o.c, n = o.n, H = a.maps.H[o.l], W = a.maps.W[o.l];
    const int y = static_cast<int>(o.y), xa = static_cast<int>(o.xa), xb = static_cast<int>(o.xb);
    T* acc = a.maps.data[o.l] + ((n * H + y) * W) * a.C + c;  // pixel x of the owned row is acc[x * C]
    const int64_t PP = a.PH * a.PW;
    int64_t j0, j1;
    level_rois(a, o.l, &j0, &j1);
    for (int64_t j = j0; j < j1; ++j) {
      const int64_t k = roi_of(a, j);
      const RoiGeom<T> g = roi_geom<T>(a.rois + k * 5, static_cast<T>(a.maps.scale[o.l]), a.PH, a.PW,
                                       a.sampling_ratio, a.aligned, a.warp, a.N);
      if (g.n != n) continue;
      if (!axis_may_touch<T>(g.y, a.PH, y, y + 1) || !axis_may_touch<T>(g.x, a.PW, xa, xb)) continue;
      const int gw = g.x.grid;
      const int64_t cnt = static_cast<int64_t>(g.y.grid) * gw;
      const T count = static_cast<T>(cnt > 1 ? cnt : 1);
      const scalar_t* gk = a.grad + k * PP * a.C + c;
      const int32_t* ak = a.max_mode ? a.argmax + k * PP * a.C + c : nullptr;
      for (int64_t ph = 0; ph < a.PH; ++ph) {
        int y0, y1;
        valid_range<T>(g.y, ph, H, &y0, &y1);
        if (y0 >= y1) continue;
        int rlo, rhi;
        touched_span<T>(g.y, ph, y0, y1, H, &rlo, &rhi);
        // Spans only prefilter (one pixel of slack); the per-sample tests below are exact.
        if (y < rlo - 1 || y > rhi + 1) continue;
        if (a.max_mode) {
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
            const T wy = axis_weight<T>(sy, y);
            // Same neighbour order as the CPU kernel: (lo, lo), (lo, hi), (hi, lo), (hi, hi).
            if (sx.lo >= xa && sx.lo < xb) acc[sx.lo * a.C] += gv * (wy * sx.wlo);
            if (sx.hi >= xa && sx.hi < xb) acc[sx.hi * a.C] += gv * (wy * sx.whi);
          }
          continue;
        }
        // avg: total row weight of pixel row y in this bin row (separable weights).
        T wy = T(0);
        for (int iy = y0; iy < y1; ++iy) wy += axis_weight<T>(axis_sample<T>(sample_pos<T>(g.y, ph, iy), H), y);
        if (wy == T(0)) continue;
        for (int64_t pw = 0; pw < a.PW; ++pw) {
          int x0, x1;
          valid_range<T>(g.x, pw, W, &x0, &x1);
          if (x0 >= x1) continue;
          int clo, chi;
          touched_span<T>(g.x, pw, x0, x1, W, &clo, &chi);
          if (chi + 1 < xa || clo - 1 >= xb) continue;
          const T gv = static_cast<T>(gk[(ph * a.PW + pw) * a.C]);
          if (gv == T(0)) continue;
          const T gr = gv * wy / count;
          for (int ix = x0; ix < x1; ++ix) {
            const AxisSample<T> sx = axis_sample<T>(sample_pos<T>(g.x, pw, ix), W);
            if (sx.lo >= xa && sx.lo < xb) acc[sx.lo * a.C] += gr * sx.wlo;
            if (sx.hi >= xa && sx.hi < xb) acc[sx.hi * a.C] += gr * sx.whi;
          }
        }
      }
    }
  }
}

// RoIPool backward, default path: one thread per (k, ph, pw, c); one atomic at the argmax pixel.
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) pool_backward_atomic_kernel(const BwdArgs<scalar_t> a) {
  using T = at::opmath_type<scalar_t>;
  for (int64_t item = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; item < a.total;
       item += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int idx = a.argmax[item];
    const int64_t c = item % a.C;
    const int64_t k = item / (a.C * a.PH * a.PW);
    const int l = roi_level(a.levels, k, a.maps.L);
    if (l < 0) continue;
    const int64_t HW = a.maps.H[l] * a.maps.W[l];
    if (idx < 0 || idx >= HW) continue;
    const int64_t n = roi_batch<T>(a.rois[k * 5], a.N);
    if (n < 0) continue;
    atomic_add(a.maps.data[l] + (n * HW + idx) * a.C + c, static_cast<T>(a.grad[item]));
  }
}

// RoIPool backward, deterministic path: one thread per (n, y, column chunk, c), gathers in RoI order.
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) pool_backward_gather_kernel(const BwdArgs<scalar_t> a) {
  using T = at::opmath_type<scalar_t>;
  for (int64_t item = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; item < a.total;
       item += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const OwnedRun o = owned_run(a.maps, a.C, item);
    const int64_t c = o.c, n = o.n, y = o.y, xa = o.xa, xb = o.xb, H = a.maps.H[o.l], W = a.maps.W[o.l];
    T* acc = a.maps.data[o.l] + ((n * H + y) * W) * a.C + c;
    const int64_t PP = a.PH * a.PW;
    const T s = static_cast<T>(a.maps.scale[o.l]);
    int64_t j0, j1;
    level_rois(a, o.l, &j0, &j1);
    for (int64_t j = j0; j < j1; ++j) {
      const int64_t k = roi_of(a, j);
      const T* r = a.rois + k * 5;
      if (roi_batch<T>(r[0], a.N) != n) continue;
      const PoolAxis ay = pool_axis<T>(r[2], r[4], s);
      // Bins lie in [start, start + size], the end inclusive since ceil((b + 1) * bin) may round up.
      if (y < ay.start || y > ay.start + ay.size) continue;
      const PoolAxis ax = pool_axis<T>(r[1], r[3], s);
      if (xb <= ax.start || xa > ax.start + ax.size) continue;
      const scalar_t* gk = a.grad + k * PP * a.C + c;
      const int32_t* ak = a.argmax + k * PP * a.C + c;
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
}

// ------------------------------------------------------------------------------------------------
// Host side
int64_t num_blocks(int64_t total) {
  const int64_t sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const int64_t cap = sms * 32;  // grid-stride loops beyond that
  const int64_t b = ceil_div(total, kThreads);
  return b < cap ? (b > 0 ? b : 1) : cap;
}

// Coordinate (and accumulation) type of the rois for a given input dtype: double for double, else float.
at::ScalarType coord_type(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

// rois come in the input dtype or in its coordinate type (float32 for half/bfloat16 input).
void check_rois_dtype(const Tensor& x, const Tensor& rois, const char* what, const char* op) {
  const at::ScalarType t = x.scalar_type(), r = rois.scalar_type();
  TORCH_CHECK(r == t || r == coord_type(t), op, ": rois must have the dtype of ", what, " (", t, ") or ",
              coord_type(t), ", got ", r);
}

void check_forward(const Tensor& input, const Tensor& rois, int64_t ph, int64_t pw, const char* op) {
  TORCH_CHECK(input.is_cuda(), op, ": input must be a CUDA tensor");
  TORCH_CHECK(input.dim() == 4, op, ": input must be 4-D [N, C, H, W], got ", input.sizes());
  TORCH_CHECK(rois.dim() == 2 && rois.size(1) == 5, op, ": rois must be [K, 5], got ", rois.sizes());
  TORCH_CHECK(input.device() == rois.device(), op, ": input (", input.device(), ") and rois (", rois.device(),
              ") must be on the same device");
  check_rois_dtype(input, rois, "input", op);
  TORCH_CHECK(ph > 0 && pw > 0, op, ": pooled size must be positive, got ", ph, "x", pw);
}

void check_backward(const Tensor& grad, const Tensor& rois, const Tensor& argmax, bool need_argmax, int64_t ph,
                    int64_t pw, int64_t N, int64_t C, const char* op) {
  TORCH_CHECK(grad.is_cuda(), op, ": grad must be a CUDA tensor");
  TORCH_CHECK(rois.dim() == 2 && rois.size(1) == 5, op, ": rois must be [K, 5], got ", rois.sizes());
  TORCH_CHECK(grad.device() == rois.device(), op, ": grad and rois must be on the same device");
  check_rois_dtype(grad, rois, "grad", op);
  TORCH_CHECK(ph > 0 && pw > 0, op, ": pooled size must be positive, got ", ph, "x", pw);
  TORCH_CHECK(N >= 0 && C >= 0, op, ": negative input size");
  TORCH_CHECK(grad.dim() == 4 && grad.size(0) == rois.size(0) && grad.size(1) == C && grad.size(2) == ph &&
                  grad.size(3) == pw,
              op, ": grad must be [K, C, ph, pw] = [", rois.size(0), ", ", C, ", ", ph, ", ", pw, "], got ",
              grad.sizes());
  if (need_argmax) {
    TORCH_CHECK(argmax.device() == grad.device(), op, ": argmax and grad must be on the same device");
    TORCH_CHECK(argmax.scalar_type() == at::kInt, op, ": argmax must be int32");
    TORCH_CHECK(argmax.sizes() == grad.sizes(), op, ": argmax must have the shape of grad ", grad.sizes(),
                ", got ", argmax.sizes());
  }
}

// The per-RoI levels of a pyramid: int64 [K] on the rois' device (values are not read on the host, so no
// sync; the kernels treat a level outside [0, L) like a bad batch index). Undefined for one map.
Tensor check_levels(const Tensor& levels, const Tensor& rois, size_t L, const char* op) {
  TORCH_CHECK(L > 0 && L <= static_cast<size_t>(kMaxLevels), op, ": supports 1 to ", kMaxLevels,
              " feature maps, got ", L);
  TORCH_CHECK(levels.scalar_type() == at::kLong && levels.dim() == 1 && levels.size(0) == rois.size(0), op,
              ": levels must be an int64 [K] = [", rois.size(0), "] tensor, got ", levels.scalar_type(), " ",
              levels.sizes());
  TORCH_CHECK(levels.device() == rois.device(), op, ": levels and rois must be on the same device");
  return levels.contiguous();
}

// Layout decision for all maps together: NHWC when every map is channels_last (and one of them is not also
// contiguous), else NCHW (maps made contiguous where needed: a pyramid of mixed layouts pays a copy of its
// channels_last levels; the backbone gives all levels one layout).
std::vector<Tensor> prepare_inputs(at::TensorList inputs, bool* nhwc) {
  bool all_cl = true, all_contig = true;
  for (const Tensor& x : inputs) {
    all_cl = all_cl && x.is_contiguous(at::MemoryFormat::ChannelsLast);
    all_contig = all_contig && x.is_contiguous();
  }
  *nhwc = all_cl && !all_contig;
  std::vector<Tensor> out;
  for (const Tensor& x : inputs) out.push_back(*nhwc ? x : x.contiguous());
  return out;
}

// Checks the maps of a pyramid (or the one map of a single-level op) against each other and the rois.
void check_inputs(at::TensorList inputs, const Tensor& rois, at::ArrayRef<double> scales, int64_t ph, int64_t pw,
                  const char* op) {
  TORCH_CHECK(!inputs.empty() && inputs.size() <= static_cast<size_t>(kMaxLevels), op, ": supports 1 to ",
              kMaxLevels, " feature maps, got ", inputs.size());
  TORCH_CHECK(scales.size() == inputs.size(), op, ": got ", inputs.size(), " feature maps but ", scales.size(),
              " spatial scales");
  for (size_t l = 0; l < inputs.size(); ++l) {
    check_forward(inputs[l], rois, ph, pw, op);
    TORCH_CHECK(inputs[l].scalar_type() == inputs[0].scalar_type() && inputs[l].device() == inputs[0].device() &&
                    inputs[l].size(0) == inputs[0].size(0) && inputs[l].size(1) == inputs[0].size(1),
                op, ": feature map ", l, " does not match map 0 in dtype, device, N or C");
  }
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

std::tuple<Tensor, Tensor> sampled_forward(at::TensorList inputs_, const Tensor& rois_, const Tensor& levels_,
                                           at::ArrayRef<double> scales, int64_t ph, int64_t pw,
                                           int64_t sampling_ratio, bool aligned, bool warp, bool max_mode,
                                           const char* op) {
  check_inputs(inputs_, rois_, scales, ph, pw, op);
  const Tensor levels = levels_.defined() ? check_levels(levels_, rois_, inputs_.size(), op) : levels_;
  const c10::cuda::CUDAGuard guard(inputs_[0].device());
  const int64_t N = inputs_[0].size(0), C = inputs_[0].size(1);
  const int64_t K = rois_.size(0);
  Tensor output = at::empty({K, C, ph, pw}, inputs_[0].options());
  Tensor argmax = max_mode ? at::empty({K, C, ph, pw}, inputs_[0].options().dtype(at::kInt))
                           : at::empty({0}, inputs_[0].options().dtype(at::kInt));
  if (output.numel() == 0) return {output, argmax};
  bool nhwc = false;
  const std::vector<Tensor> inputs = prepare_inputs(inputs_, &nhwc);
  const Tensor rois = rois_.to(coord_type(inputs[0].scalar_type())).contiguous();
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, inputs[0].scalar_type(), "roi_sampled_forward_cuda", [&] {
    using T = at::opmath_type<scalar_t>;
    constexpr int V = 16 / sizeof(scalar_t);  // 16-byte vectors: 4 float, 2 double, 8 half/bfloat16
    SampledFwdArgs<scalar_t> a;
    a.maps = input_maps<scalar_t>(inputs, scales);
    bool aligned16 = true;
    for (int l = 0; l < a.maps.L; ++l) aligned16 = aligned16 && reinterpret_cast<uintptr_t>(a.maps.data[l]) % 16 == 0;
    a.levels = levels.defined() ? levels.const_data_ptr<int64_t>() : nullptr;
    a.rois = rois.const_data_ptr<T>();
    a.out = output.mutable_data_ptr<scalar_t>();
    a.argmax = max_mode ? argmax.mutable_data_ptr<int32_t>() : nullptr;
    a.N = N;
    a.C = C;
    a.PH = ph;
    a.PW = pw;
    a.sampling_ratio = sampling_ratio;
    a.aligned = aligned;
    a.warp = warp;
    a.max_mode = max_mode;
    const bool vec = nhwc && C % V == 0 && aligned16;
    a.total = K * ph * pw * (vec ? C / V : C);
    const int64_t blocks = num_blocks(a.total);
    if (vec) {
      sampled_forward_kernel<scalar_t, V, true><<<blocks, kThreads, 0, stream>>>(a);
    } else if (nhwc) {
      sampled_forward_kernel<scalar_t, 1, true><<<blocks, kThreads, 0, stream>>>(a);
    } else {
      sampled_forward_kernel<scalar_t, 1, false><<<blocks, kThreads, 0, stream>>>(a);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {output, argmax};
}

std::tuple<Tensor, Tensor> pool_forward(at::TensorList inputs_, const Tensor& rois_, const Tensor& levels_,
                                        at::ArrayRef<double> scales, int64_t ph, int64_t pw, const char* op) {
  check_inputs(inputs_, rois_, scales, ph, pw, op);
  const Tensor levels = levels_.defined() ? check_levels(levels_, rois_, inputs_.size(), op) : levels_;
  const c10::cuda::CUDAGuard guard(inputs_[0].device());
  const int64_t N = inputs_[0].size(0), C = inputs_[0].size(1);
  const int64_t K = rois_.size(0);
  Tensor output = at::empty({K, C, ph, pw}, inputs_[0].options());
  Tensor argmax = at::empty({K, C, ph, pw}, inputs_[0].options().dtype(at::kInt));
  if (output.numel() == 0) return {output, argmax};
  bool nhwc = false;
  const std::vector<Tensor> inputs = prepare_inputs(inputs_, &nhwc);
  const Tensor rois = rois_.to(coord_type(inputs[0].scalar_type())).contiguous();
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, inputs[0].scalar_type(), "roi_pool_forward_cuda", [&] {
    using T = at::opmath_type<scalar_t>;
    PoolFwdArgs<scalar_t> a;
    a.maps = input_maps<scalar_t>(inputs, scales);
    a.levels = levels.defined() ? levels.const_data_ptr<int64_t>() : nullptr;
    a.rois = rois.const_data_ptr<T>();
    a.out = output.mutable_data_ptr<scalar_t>();
    a.argmax = argmax.mutable_data_ptr<int32_t>();
    a.total = output.numel();
    a.N = N;
    a.C = C;
    a.PH = ph;
    a.PW = pw;
    const int64_t blocks = num_blocks(a.total);
    if (nhwc) {
      pool_forward_kernel<scalar_t, true><<<blocks, kThreads, 0, stream>>>(a);
    } else {
      pool_forward_kernel<scalar_t, false><<<blocks, kThreads, 0, stream>>>(a);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {output, argmax};
}

// Columns per thread of the deterministic gather kernels: enough threads to fill the GPU, but chunks of
// at least 4 columns (every thread scans all RoIs).
void gather_chunks(int64_t N, int64_t C, int64_t H, int64_t W, int64_t* chunk_w, int64_t* n_chunks) {
  const int64_t sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const int64_t target = sms * 2048;
  int64_t want = ceil_div(target, N * C * (H > 0 ? H : 1));
  const int64_t most = ceil_div(W, 4);
  if (want > most) want = most;
  if (want < 1) want = 1;
  *chunk_w = ceil_div(W, want);
  *n_chunks = *chunk_w > 0 ? ceil_div(W, *chunk_w) : 0;
}

// Shared driver of the backward kernels: one gradient [N, C, H_l, W_l] per level.
std::vector<Tensor> run_backward(const Tensor& grad_, const Tensor& rois_, const Tensor& levels_,
                                 const Tensor& argmax_, at::ArrayRef<double> scales, int64_t ph, int64_t pw,
                                 int64_t N, int64_t C, at::IntArrayRef heights, at::IntArrayRef widths,
                                 int64_t sampling_ratio, bool aligned, OpKind kind, bool max_mode, const char* op) {
  const bool need_argmax = max_mode || kind == OpKind::Pool;
  check_backward(grad_, rois_, argmax_, need_argmax, ph, pw, N, C, op);
  const size_t L = heights.size();
  TORCH_CHECK(widths.size() == L && scales.size() == L, op, ": got ", L, " heights, ", widths.size(),
              " widths and ", scales.size(), " spatial scales");
  const Tensor levels = levels_.defined() ? check_levels(levels_, rois_, L, op) : levels_;
  for (size_t l = 0; l < L; ++l) TORCH_CHECK(heights[l] >= 0 && widths[l] >= 0, op, ": negative input size");
  const c10::cuda::CUDAGuard guard(grad_.device());
  const int64_t K = rois_.size(0);
  const at::ScalarType acc_type = coord_type(grad_.scalar_type());
  std::vector<Tensor> accs;
  for (size_t l = 0; l < L; ++l) {
    accs.push_back(at::zeros({N, heights[l], widths[l], C}, grad_.options().dtype(acc_type)));
  }
  if (K > 0 && N * C > 0) {
    const bool det = at::globalContext().deterministicAlgorithms();
    // Channel-last views of grad / argmax so that channel-fastest threads read them coalesced.
    const Tensor grad = grad_.permute({0, 2, 3, 1}).contiguous();
    const Tensor argmax = need_argmax ? argmax_.permute({0, 2, 3, 1}).contiguous() : Tensor();
    const Tensor rois = rois_.to(acc_type).contiguous();
    // Deterministic path with levels: RoIs grouped by level on the device (a stable sort keeps each level's
    // RoIs in ascending order, the summation order of the per-level op; no host sync).
    Tensor by_level, level_begin;
    if (det && levels.defined()) {
      const auto sorted = at::sort(levels, /*stable=*/true);
      by_level = std::get<1>(sorted).contiguous();
      const Tensor bounds = at::arange(static_cast<int64_t>(L) + 1, levels.options());
      level_begin = at::searchsorted(std::get<0>(sorted), bounds);  // first sorted position of each level
    }
    cudaStream_t stream = at::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "roi_backward_cuda", [&] {
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
      a.aligned = aligned;
      a.warp = kind == OpKind::Warp;
      a.max_mode = max_mode;
      if (det) {
        a.maps.items[0] = 0;
        for (size_t l = 0; l < L; ++l) {
          gather_chunks(N, C, heights[l], widths[l], &a.maps.chunk_w[l], &a.maps.n_chunks[l]);
          a.maps.items[l + 1] = a.maps.items[l] + N * heights[l] * a.maps.n_chunks[l] * C;
        }
        a.total = a.maps.items[L];
        const int64_t blocks = num_blocks(a.total);
        if (kind == OpKind::Pool) {
          pool_backward_gather_kernel<scalar_t><<<blocks, kThreads, 0, stream>>>(a);
        } else {
          sampled_backward_gather_kernel<scalar_t><<<blocks, kThreads, 0, stream>>>(a);
        }
      } else {
        a.total = K * ph * pw * C;
        const int64_t blocks = num_blocks(a.total);
        if (kind == OpKind::Pool) {
          pool_backward_atomic_kernel<scalar_t><<<blocks, kThreads, 0, stream>>>(a);
        } else {
          sampled_backward_atomic_kernel<scalar_t><<<blocks, kThreads, 0, stream>>>(a);
        }
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  std::vector<Tensor> grad_inputs;
  for (size_t l = 0; l < L; ++l) {
    grad_inputs.push_back(at::empty({N, C, heights[l], widths[l]}, grad_.options()));
    grad_inputs.back().copy_(accs[l].permute({0, 3, 1, 2}));
  }
  return grad_inputs;
}

// ------------------------------------------------------------------------------------------------
// Entry points: the schema pair. RoI k reads map levels[k] (map 0 when levels is None), one launch per direction.
Tensor defined_or_empty(const std::optional<Tensor>& t) { return t.has_value() ? *t : Tensor(); }

std::tuple<Tensor, Tensor> multilevel_roi_forward_cuda(at::TensorList inputs, const Tensor& rois,
                                                       const std::optional<Tensor>& levels,
                                                       at::ArrayRef<double> spatial_scales, c10::string_view kind,
                                                       int64_t ph, int64_t pw, int64_t sampling_ratio, bool aligned,
                                                       bool max_mode) {
  const char* op = "multilevel_roi_forward";
  const OpKind k = op_kind(kind, op);
  const Tensor lv = defined_or_empty(levels);
  if (k == OpKind::Pool) return pool_forward(inputs, rois, lv, spatial_scales, ph, pw, op);
  return sampled_forward(inputs, rois, lv, spatial_scales, ph, pw, sampling_ratio,
                         k == OpKind::Align ? aligned : true, k == OpKind::Warp, max_mode, op);
}

std::vector<Tensor> multilevel_roi_backward_cuda(const Tensor& grad, const Tensor& rois,
                                                 const std::optional<Tensor>& levels, const Tensor& argmax,
                                                 at::ArrayRef<double> spatial_scales, c10::string_view kind,
                                                 int64_t ph, int64_t pw, int64_t N, int64_t C,
                                                 at::IntArrayRef heights, at::IntArrayRef widths,
                                                 int64_t sampling_ratio, bool aligned, bool max_mode) {
  const char* op = "multilevel_roi_backward";
  const OpKind k = op_kind(kind, op);
  return run_backward(grad, rois, defined_or_empty(levels), argmax, spatial_scales, ph, pw, N, C, heights, widths,
                      sampling_ratio, k == OpKind::Align ? aligned : true, k, k != OpKind::Pool && max_mode, op);
}

}  // namespace
}  // namespace roi_ops_cuda

TORCH_LIBRARY_IMPL(roi_ops, CUDA, m) {
  m.impl("multilevel_roi_forward", &roi_ops_cuda::multilevel_roi_forward_cuda);
  m.impl("multilevel_roi_backward", &roi_ops_cuda::multilevel_roi_backward_cuda);
}
