// roi_ops CUDA kernels: RoIAlign, RoIWarp and RoIPool, forward and backward.
// Registered with TORCH_LIBRARY_IMPL(roi_ops, CUDA, m); the schemas live in ../roi_ops.cpp.
//
// Shapes: input [N, C, H, W], rois [K, 5] = (batch_idx, x1, y1, x2, y2) in the input dtype or in the
//         coordinate type (float32 for half/bfloat16 input); the host converts them to T before launching,
//         output / argmax / grad [K, C, PH, PW] (contiguous), grad_input [N, C, H, W] (contiguous).
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

#include "../roi_geometry.h"

namespace roi_ops_cuda {
namespace {

using at::Tensor;
using namespace roi_geometry;

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
// RoIAlign / RoIWarp forward
template <typename scalar_t>
struct SampledFwdArgs {
  const scalar_t* input;
  const at::opmath_type<scalar_t>* rois;  // [K, 5] in the coordinate type
  scalar_t* out;
  int32_t* argmax;  // nullptr in avg mode
  int64_t total;    // number of threads' work items
  int64_t N, C, H, W, PH, PW, sampling_ratio;
  double scale;
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
    const RoiGeom<T> g = roi_geom<T>(a.rois + k * 5, static_cast<T>(a.scale), a.PH, a.PW,
                                               a.sampling_ratio, a.aligned, a.warp, a.N);
    int y0 = 0, y1 = 0, x0 = 0, x1 = 0;
    if (g.n >= 0) {
      valid_range<T>(g.y, ph, a.H, &y0, &y1);
      valid_range<T>(g.x, pw, a.W, &x0, &x1);
    }
    // Strides of the input (element offsets): base of (n, c), row and column.
    int64_t base, ys, xs;
    if (NHWC) {
      base = g.n * a.H * a.W * a.C + c;
      ys = a.W * a.C;
      xs = a.C;
    } else {
      base = (g.n * a.C + c) * a.H * a.W;
      ys = a.W;
      xs = 1;
    }
    const scalar_t* in = a.input + (g.n >= 0 ? base : 0);
    T res[VEC];
    int bi[VEC];
#pragma unroll
    for (int v = 0; v < VEC; ++v) {
      res[v] = T(0);
      bi[v] = -1;
    }
    const int gw = g.x.grid;
    for (int iy = y0; iy < y1; ++iy) {
      const AxisSample<T> sy = axis_sample<T>(sample_pos<T>(g.y, ph, iy), a.H);
      const scalar_t* rl = in + sy.lo * ys;
      const scalar_t* rh = in + sy.hi * ys;
      for (int ix = x0; ix < x1; ++ix) {
        const AxisSample<T> sx = axis_sample<T>(sample_pos<T>(g.x, pw, ix), a.W);
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
  const scalar_t* input;
  const at::opmath_type<scalar_t>* rois;  // [K, 5] in the coordinate type
  scalar_t* out;
  int32_t* argmax;
  int64_t total;
  int64_t N, C, H, W, PH, PW;
  double scale;
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
    const T s = static_cast<T>(a.scale);
    const int64_t n = roi_batch<T>(r[0], a.N);
    int64_t hs = 0, he = 0, ws = 0, we = 0;
    if (n >= 0) {
      const PoolAxis ay = pool_axis<T>(r[2], r[4], s);
      const PoolAxis ax = pool_axis<T>(r[1], r[3], s);
      pool_bin<T>(ay, a.PH, ph, a.H, &hs, &he);
      pool_bin<T>(ax, a.PW, pw, a.W, &ws, &we);
    }
    const bool empty = he <= hs || we <= ws;
    T best = empty ? T(0) : T(-FLT_MAX);
    int64_t bi = -1;
    if (!empty) {
      int64_t base, ys, xs;
      if (NHWC) {
        base = n * a.H * a.W * a.C + c;
        ys = a.W * a.C;
        xs = a.C;
      } else {
        base = (n * a.C + c) * a.H * a.W;
        ys = a.W;
        xs = 1;
      }
      const scalar_t* in = a.input + base;
      for (int64_t h = hs; h < he; ++h) {
        for (int64_t w = ws; w < we; ++w) {
          const T v = static_cast<T>(in[h * ys + w * xs]);
          if (v > best) {
            best = v;
            bi = h * a.W + w;
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
// Backward (shared arguments). grad / argmax are [K, PH, PW, C] contiguous; acc is [N, H, W, C] of T.
template <typename scalar_t>
struct BwdArgs {
  const scalar_t* grad;
  const int32_t* argmax;  // nullptr in avg mode
  const at::opmath_type<scalar_t>* rois;  // [K, 5] in the coordinate type
  at::opmath_type<scalar_t>* acc;
  int64_t total;
  int64_t K, N, C, H, W, PH, PW, sampling_ratio;
  int64_t chunk_w, n_chunks;  // deterministic path: columns per thread, chunks per row
  double scale;
  bool aligned, warp, max_mode;
};

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
    const RoiGeom<T> g = roi_geom<T>(a.rois + k * 5, static_cast<T>(a.scale), a.PH, a.PW,
                                               a.sampling_ratio, a.aligned, a.warp, a.N);
    if (g.n < 0) continue;
    const T gv = static_cast<T>(a.grad[item]);
    T* acc = a.acc + g.n * a.H * a.W * a.C + c;
    const int64_t ys = a.W * a.C, xs = a.C;
    if (a.max_mode) {
      const int idx = a.argmax[item];
      const int gh = g.y.grid, gw = g.x.grid;
      if (idx < 0 || gw <= 0 || idx >= static_cast<int64_t>(gh) * gw) continue;
      const T py = sample_pos<T>(g.y, ph, idx / gw), px = sample_pos<T>(g.x, pw, idx % gw);
      if (!sample_valid<T>(py, a.H) || !sample_valid<T>(px, a.W)) continue;  // a constant 0 won
      const AxisSample<T> sy = axis_sample<T>(py, a.H), sx = axis_sample<T>(px, a.W);
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
    valid_range<T>(g.y, ph, a.H, &y0, &y1);
    valid_range<T>(g.x, pw, a.W, &x0, &x1);
    if (y0 >= y1 || x0 >= x1 || gv == T(0)) continue;
    const int64_t cnt = static_cast<int64_t>(g.y.grid) * g.x.grid;
    const T gs = gv / static_cast<T>(cnt > 1 ? cnt : 1);
    int rlo, rhi, clo, chi;
    touched_span<T>(g.y, ph, y0, y1, a.H, &rlo, &rhi);
    touched_span<T>(g.x, pw, x0, x1, a.W, &clo, &chi);
    bool separable = rhi - rlo < kMaxSpan && chi - clo < kMaxSpan;
    T wy[kMaxSpan], wx[kMaxSpan];
    if (separable) {
      // Contribution to pixel (r, s) = gs * (sum of row weights at r) * (sum of column weights at s).
#pragma unroll
      for (int i = 0; i < kMaxSpan; ++i) wy[i] = wx[i] = T(0);
      // The spans come from the end samples (positions are monotone); the index checks only guard the
      // local tables should a position ever round differently (then the per-sample path below is used).
      for (int iy = y0; iy < y1 && separable; ++iy) {
        const AxisSample<T> s = axis_sample<T>(sample_pos<T>(g.y, ph, iy), a.H);
        if (s.lo < rlo || s.hi > rhi) {
          separable = false;
          break;
        }
        wy[s.lo - rlo] += s.wlo;
        wy[s.hi - rlo] += s.whi;
      }
      for (int ix = x0; ix < x1 && separable; ++ix) {
        const AxisSample<T> s = axis_sample<T>(sample_pos<T>(g.x, pw, ix), a.W);
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
        const AxisSample<T> sy = axis_sample<T>(sample_pos<T>(g.y, ph, iy), a.H);
        T* rl = acc + sy.lo * ys;
        T* rh = acc + sy.hi * ys;
        for (int ix = x0; ix < x1; ++ix) {
          const AxisSample<T> sx = axis_sample<T>(sample_pos<T>(g.x, pw, ix), a.W);
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
    const int64_t c = item % a.C;
    int64_t t = item / a.C;
    const int64_t chunk = t % a.n_chunks;
    t /= a.n_chunks;
    const int y = static_cast<int>(t % a.H);
    const int64_t n = t / a.H;
    const int xa = static_cast<int>(chunk * a.chunk_w);
    const int xb = static_cast<int>(xa + a.chunk_w < a.W ? xa + a.chunk_w : a.W);
    T* acc = a.acc + ((n * a.H + y) * a.W) * a.C + c;  // pixel x of the owned row is acc[x * C]
    const int64_t PP = a.PH * a.PW;
    for (int64_t k = 0; k < a.K; ++k) {
      const RoiGeom<T> g = roi_geom<T>(a.rois + k * 5, static_cast<T>(a.scale), a.PH, a.PW,
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
        valid_range<T>(g.y, ph, a.H, &y0, &y1);
        if (y0 >= y1) continue;
        int rlo, rhi;
        touched_span<T>(g.y, ph, y0, y1, a.H, &rlo, &rhi);
        // Spans only prefilter (one pixel of slack); the per-sample tests below are exact.
        if (y < rlo - 1 || y > rhi + 1) continue;
        if (a.max_mode) {
          for (int64_t pw = 0; pw < a.PW; ++pw) {
            const int idx = ak[(ph * a.PW + pw) * a.C];
            if (idx < 0 || gw <= 0 || idx >= cnt) continue;
            const int iy = idx / gw, ix = idx % gw;
            if (iy < y0 || iy >= y1) continue;  // outside the map: a constant 0 won
            const AxisSample<T> sy = axis_sample<T>(sample_pos<T>(g.y, ph, iy), a.H);
            if (sy.lo != y && sy.hi != y) continue;
            const T px = sample_pos<T>(g.x, pw, ix);
            if (!sample_valid<T>(px, a.W)) continue;
            const AxisSample<T> sx = axis_sample<T>(px, a.W);
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
        for (int iy = y0; iy < y1; ++iy) wy += axis_weight<T>(axis_sample<T>(sample_pos<T>(g.y, ph, iy), a.H), y);
        if (wy == T(0)) continue;
        for (int64_t pw = 0; pw < a.PW; ++pw) {
          int x0, x1;
          valid_range<T>(g.x, pw, a.W, &x0, &x1);
          if (x0 >= x1) continue;
          int clo, chi;
          touched_span<T>(g.x, pw, x0, x1, a.W, &clo, &chi);
          if (chi + 1 < xa || clo - 1 >= xb) continue;
          const T gv = static_cast<T>(gk[(ph * a.PW + pw) * a.C]);
          if (gv == T(0)) continue;
          const T gr = gv * wy / count;
          for (int ix = x0; ix < x1; ++ix) {
            const AxisSample<T> sx = axis_sample<T>(sample_pos<T>(g.x, pw, ix), a.W);
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
    if (idx < 0 || idx >= a.H * a.W) continue;
    const int64_t c = item % a.C;
    const int64_t k = item / (a.C * a.PH * a.PW);
    const int64_t n = roi_batch<T>(a.rois[k * 5], a.N);
    if (n < 0) continue;
    atomic_add(a.acc + (n * a.H * a.W + idx) * a.C + c, static_cast<T>(a.grad[item]));
  }
}

// RoIPool backward, deterministic path: one thread per (n, y, column chunk, c), gathers in RoI order.
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) pool_backward_gather_kernel(const BwdArgs<scalar_t> a) {
  using T = at::opmath_type<scalar_t>;
  for (int64_t item = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; item < a.total;
       item += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t c = item % a.C;
    int64_t t = item / a.C;
    const int64_t chunk = t % a.n_chunks;
    t /= a.n_chunks;
    const int64_t y = t % a.H;
    const int64_t n = t / a.H;
    const int64_t xa = chunk * a.chunk_w;
    const int64_t xb = xa + a.chunk_w < a.W ? xa + a.chunk_w : a.W;
    T* acc = a.acc + ((n * a.H + y) * a.W) * a.C + c;
    const int64_t PP = a.PH * a.PW;
    const T s = static_cast<T>(a.scale);
    for (int64_t k = 0; k < a.K; ++k) {
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
        pool_bin<T>(ay, a.PH, ph, a.H, &hs, &he);
        if (y < hs || y >= he) continue;
        for (int64_t pw = 0; pw < a.PW; ++pw) {
          const int idx = ak[(ph * a.PW + pw) * a.C];
          if (idx < 0 || idx / a.W != y) continue;
          const int64_t x = idx % a.W;
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
                    int64_t pw, int64_t N, int64_t C, int64_t H, int64_t W, const char* op) {
  TORCH_CHECK(grad.is_cuda(), op, ": grad must be a CUDA tensor");
  TORCH_CHECK(rois.dim() == 2 && rois.size(1) == 5, op, ": rois must be [K, 5], got ", rois.sizes());
  TORCH_CHECK(grad.device() == rois.device(), op, ": grad and rois must be on the same device");
  check_rois_dtype(grad, rois, "grad", op);
  TORCH_CHECK(ph > 0 && pw > 0, op, ": pooled size must be positive, got ", ph, "x", pw);
  TORCH_CHECK(N >= 0 && C >= 0 && H >= 0 && W >= 0, op, ": negative input size");
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

// Layout decision: NCHW when contiguous (also when both layouts agree), else NHWC when channels_last,
// else make it contiguous.
Tensor prepare_input(const Tensor& input, bool* nhwc) {
  if (input.is_contiguous()) {
    *nhwc = false;
    return input;
  }
  if (input.is_contiguous(at::MemoryFormat::ChannelsLast)) {
    *nhwc = true;
    return input;
  }
  *nhwc = false;
  return input.contiguous();
}

std::tuple<Tensor, Tensor> sampled_forward(const Tensor& input_, const Tensor& rois_, double spatial_scale,
                                           int64_t ph, int64_t pw, int64_t sampling_ratio, bool aligned,
                                           bool warp, bool max_mode, const char* op) {
  check_forward(input_, rois_, ph, pw, op);
  const c10::cuda::CUDAGuard guard(input_.device());
  const int64_t N = input_.size(0), C = input_.size(1), H = input_.size(2), W = input_.size(3);
  const int64_t K = rois_.size(0);
  Tensor output = at::empty({K, C, ph, pw}, input_.options());
  Tensor argmax = max_mode ? at::empty({K, C, ph, pw}, input_.options().dtype(at::kInt))
                           : at::empty({0}, input_.options().dtype(at::kInt));
  if (output.numel() == 0) return {output, argmax};
  bool nhwc = false;
  const Tensor input = prepare_input(input_, &nhwc);
  const Tensor rois = rois_.to(coord_type(input.scalar_type())).contiguous();
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "roi_sampled_forward_cuda", [&] {
    using T = at::opmath_type<scalar_t>;
    SampledFwdArgs<scalar_t> a;
    a.input = input.const_data_ptr<scalar_t>();
    a.rois = rois.const_data_ptr<T>();
    a.out = output.mutable_data_ptr<scalar_t>();
    a.argmax = max_mode ? argmax.mutable_data_ptr<int32_t>() : nullptr;
    a.N = N;
    a.C = C;
    a.H = H;
    a.W = W;
    a.PH = ph;
    a.PW = pw;
    a.sampling_ratio = sampling_ratio;
    a.scale = spatial_scale;
    a.aligned = aligned;
    a.warp = warp;
    a.max_mode = max_mode;
    constexpr int V = 16 / sizeof(scalar_t);  // 16-byte vectors: 4 float, 2 double, 8 half/bfloat16
    const bool vec = nhwc && C % V == 0 && reinterpret_cast<uintptr_t>(a.input) % 16 == 0;
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

// Columns per thread of the deterministic gather kernels: enough threads to fill the GPU, but chunks of
// at least 4 columns (every thread scans all RoIs).
void gather_chunks(int64_t N, int64_t C, int64_t H, int64_t W, int64_t* chunk_w, int64_t* n_chunks) {
  const int64_t sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const int64_t target = sms * 2048;
  int64_t want = ceil_div(target, N * C * H);
  const int64_t most = ceil_div(W, 4);
  if (want > most) want = most;
  if (want < 1) want = 1;
  *chunk_w = ceil_div(W, want);
  *n_chunks = ceil_div(W, *chunk_w);
}

// Shared driver of the backward kernels. kind: 0 = RoIAlign, 1 = RoIWarp, 2 = RoIPool.
Tensor run_backward(const Tensor& grad_, const Tensor& rois_, const Tensor& argmax_, double spatial_scale,
                    int64_t ph, int64_t pw, int64_t N, int64_t C, int64_t H, int64_t W, int64_t sampling_ratio,
                    bool aligned, int kind, bool max_mode, const char* op) {
  const bool need_argmax = max_mode || kind == 2;
  check_backward(grad_, rois_, argmax_, need_argmax, ph, pw, N, C, H, W, op);
  const c10::cuda::CUDAGuard guard(grad_.device());
  const int64_t K = rois_.size(0);
  if (N * C * H * W == 0 || K == 0) return at::zeros({N, C, H, W}, grad_.options());
  const bool det = at::globalContext().deterministicAlgorithms();
  // Channel-last views of grad / argmax so that channel-fastest threads read them coalesced.
  const Tensor grad = grad_.permute({0, 2, 3, 1}).contiguous();
  const Tensor argmax = need_argmax ? argmax_.permute({0, 2, 3, 1}).contiguous() : Tensor();
  const at::ScalarType acc_type = coord_type(grad.scalar_type());
  const Tensor rois = rois_.to(acc_type).contiguous();
  Tensor acc = at::zeros({N, H, W, C}, grad.options().dtype(acc_type));
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "roi_backward_cuda", [&] {
    using T = at::opmath_type<scalar_t>;
    BwdArgs<scalar_t> a;
    a.grad = grad.const_data_ptr<scalar_t>();
    a.argmax = need_argmax ? argmax.const_data_ptr<int32_t>() : nullptr;
    a.rois = rois.const_data_ptr<T>();
    a.acc = acc.mutable_data_ptr<T>();
    a.K = K;
    a.N = N;
    a.C = C;
    a.H = H;
    a.W = W;
    a.PH = ph;
    a.PW = pw;
    a.sampling_ratio = sampling_ratio;
    a.scale = spatial_scale;
    a.aligned = aligned;
    a.warp = kind == 1;
    a.max_mode = max_mode;
    a.chunk_w = W;
    a.n_chunks = 1;
    if (det) {
      gather_chunks(N, C, H, W, &a.chunk_w, &a.n_chunks);
      a.total = N * H * a.n_chunks * C;
      const int64_t blocks = num_blocks(a.total);
      if (kind == 2) {
        pool_backward_gather_kernel<scalar_t><<<blocks, kThreads, 0, stream>>>(a);
      } else {
        sampled_backward_gather_kernel<scalar_t><<<blocks, kThreads, 0, stream>>>(a);
      }
    } else {
      a.total = K * ph * pw * C;
      const int64_t blocks = num_blocks(a.total);
      if (kind == 2) {
        pool_backward_atomic_kernel<scalar_t><<<blocks, kThreads, 0, stream>>>(a);
      } else {
        sampled_backward_atomic_kernel<scalar_t><<<blocks, kThreads, 0, stream>>>(a);
      }
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  Tensor grad_input = at::empty({N, C, H, W}, grad_.options());
  grad_input.copy_(acc.permute({0, 3, 1, 2}));
  return grad_input;
}

// ------------------------------------------------------------------------------------------------
// Entry points
std::tuple<Tensor, Tensor> roi_align_forward_cuda(const Tensor& input, const Tensor& rois, double spatial_scale,
                                                  int64_t ph, int64_t pw, int64_t sampling_ratio, bool aligned,
                                                  bool max_mode) {
  return sampled_forward(input, rois, spatial_scale, ph, pw, sampling_ratio, aligned, /*warp=*/false, max_mode,
                         "roi_align_forward");
}

Tensor roi_align_backward_cuda(const Tensor& grad, const Tensor& rois, const Tensor& argmax, double spatial_scale,
                               int64_t ph, int64_t pw, int64_t N, int64_t C, int64_t H, int64_t W,
                               int64_t sampling_ratio, bool aligned, bool max_mode) {
  return run_backward(grad, rois, argmax, spatial_scale, ph, pw, N, C, H, W, sampling_ratio, aligned, 0, max_mode,
                      "roi_align_backward");
}

std::tuple<Tensor, Tensor> roi_warp_forward_cuda(const Tensor& input, const Tensor& rois, double spatial_scale,
                                                 int64_t ph, int64_t pw, int64_t sampling_ratio, bool max_mode) {
  return sampled_forward(input, rois, spatial_scale, ph, pw, sampling_ratio, /*aligned=*/true, /*warp=*/true,
                         max_mode, "roi_warp_forward");
}

Tensor roi_warp_backward_cuda(const Tensor& grad, const Tensor& rois, const Tensor& argmax, double spatial_scale,
                              int64_t ph, int64_t pw, int64_t N, int64_t C, int64_t H, int64_t W,
                              int64_t sampling_ratio, bool max_mode) {
  return run_backward(grad, rois, argmax, spatial_scale, ph, pw, N, C, H, W, sampling_ratio, true, 1, max_mode,
                      "roi_warp_backward");
}

std::tuple<Tensor, Tensor> roi_pool_forward_cuda(const Tensor& input_, const Tensor& rois_, double spatial_scale,
                                                 int64_t ph, int64_t pw) {
  const char* op = "roi_pool_forward";
  check_forward(input_, rois_, ph, pw, op);
  const c10::cuda::CUDAGuard guard(input_.device());
  const int64_t N = input_.size(0), C = input_.size(1), H = input_.size(2), W = input_.size(3);
  const int64_t K = rois_.size(0);
  Tensor output = at::empty({K, C, ph, pw}, input_.options());
  Tensor argmax = at::empty({K, C, ph, pw}, input_.options().dtype(at::kInt));
  if (output.numel() == 0) return {output, argmax};
  bool nhwc = false;
  const Tensor input = prepare_input(input_, &nhwc);
  const Tensor rois = rois_.to(coord_type(input.scalar_type())).contiguous();
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "roi_pool_forward_cuda", [&] {
    using T = at::opmath_type<scalar_t>;
    PoolFwdArgs<scalar_t> a;
    a.input = input.const_data_ptr<scalar_t>();
    a.rois = rois.const_data_ptr<T>();
    a.out = output.mutable_data_ptr<scalar_t>();
    a.argmax = argmax.mutable_data_ptr<int32_t>();
    a.total = output.numel();
    a.N = N;
    a.C = C;
    a.H = H;
    a.W = W;
    a.PH = ph;
    a.PW = pw;
    a.scale = spatial_scale;
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

Tensor roi_pool_backward_cuda(const Tensor& grad, const Tensor& rois, const Tensor& argmax, double spatial_scale,
                              int64_t ph, int64_t pw, int64_t N, int64_t C, int64_t H, int64_t W) {
  return run_backward(grad, rois, argmax, spatial_scale, ph, pw, N, C, H, W, 0, false, 2, false,
                      "roi_pool_backward");
}

}  // namespace
}  // namespace roi_ops_cuda

TORCH_LIBRARY_IMPL(roi_ops, CUDA, m) {
  m.impl("roi_align_forward", &roi_ops_cuda::roi_align_forward_cuda);
  m.impl("roi_align_backward", &roi_ops_cuda::roi_align_backward_cuda);
  m.impl("roi_warp_forward", &roi_ops_cuda::roi_warp_forward_cuda);
  m.impl("roi_warp_backward", &roi_ops_cuda::roi_warp_backward_cuda);
  m.impl("roi_pool_forward", &roi_ops_cuda::roi_pool_forward_cuda);
  m.impl("roi_pool_backward", &roi_ops_cuda::roi_pool_backward_cuda);
}
