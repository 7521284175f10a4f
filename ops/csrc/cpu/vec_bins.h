// The bins of one RoI for a vector of channels at a time (at::vec::Vectorized<T>, T = the opmath type), on maps
// whose channels are innermost: pixel (y, x) of the RoI's image at base[(y * W + x) * ps], its channels
// contiguous from there. The NHWC kernels (nhwc.h: the maps themselves, ps = C) and the channel-blocked NCHW
// kernels (blocked.h: a block of channels transposed into a scratch buffer, ps = channels of the block) run them.
//
// In that layout the four bilinear neighbours of a sample are four contiguous runs of channels, so one set of
// weights (from the per-RoI sampling tables of tables.h) serves a whole vector of channels: the scalar work of
// nchw.h per (sample, channel) becomes one vector operation per (sample, V channels).
//
// Every per-lane operation is the scalar kernel's operation in the scalar kernel's order (no FMA: the build
// turns contraction off and at::vec's operators never fuse), so the results equal nchw.h's bit for bit.
//
// Tiles: the nc channels of a RoI as [ph * pw][nc] (bin-major, channels contiguous), which the drivers
// transpose to and from the [K, C, ph, pw] output / upstream gradient.
#pragma once

#include <ATen/OpMathType.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <array>
#include <cfloat>
#include <type_traits>

#include "scatter.h"
#include "tables.h"

namespace roi_ops {
namespace vec_bins {

using at::vec::Vectorized;

// n (<= V) consecutive channels at p, as a vector of T (lanes n.. are 0).
template <typename scalar_t>
inline Vectorized<at::opmath_type<scalar_t>> load(const scalar_t* p, int64_t n) {
  using T = at::opmath_type<scalar_t>;
  using Vec = Vectorized<T>;
  if constexpr (std::is_same_v<scalar_t, T>) {
    return n == Vec::size() ? Vec::loadu(p) : Vec::loadu(p, n);
  } else {
    if (n == Vec::size()) {
      Vec v;
      at::vec::load_to_float<scalar_t>(p, v);
      return v;
    }
    T tmp[Vec::size()] = {};
    for (int64_t i = 0; i < n; ++i) tmp[i] = static_cast<T>(p[i]);
    return Vec::loadu(tmp);
  }
}

template <typename T>
inline void add_to(T* p, const Vectorized<T>& v, int64_t n) {
  if (n == Vectorized<T>::size()) {
    (Vectorized<T>::loadu(p) + v).store(p);
  } else {
    (Vectorized<T>::loadu(p, n) + v).store(p, n);
  }
}

// Per lane: the running maximum and the index of its first occurrence (a later equal value does not replace
// it, nor does NaN). With as many int32 lanes as T lanes (float) the indices are blended as a vector too.
template <typename T>
struct Winner {
  using Vec = Vectorized<T>;
  using VecI = Vectorized<int32_t>;
  static constexpr int V = Vec::size();
  static constexpr bool kIntLanes = VecI::size() == V;

  Vec best;
  std::conditional_t<kIntLanes, VecI, std::array<int32_t, V>> idx;

  void reset(const Vec& v, int32_t i) {
    best = v;
    if constexpr (kIntLanes) {
      idx = VecI(i);
    } else {
      idx.fill(i);
    }
  }
  void step(const Vec& v, int32_t i) {
    const Vec m = v > best;
    best = Vec::blendv(best, v, m);
    if constexpr (kIntLanes) {
      idx = VecI::blendv(idx, VecI(i), at::vec::cast<int32_t>(m));
    } else {
      const int taken = ~m.zero_mask() & ((1 << V) - 1);
      for (int l = 0; l < V; ++l) {
        if (taken >> l & 1) idx[l] = i;
      }
    }
  }
  void store(T* b, int32_t* a, int64_t n) const {
    best.store(b, static_cast<int>(n));
    if constexpr (kIntLanes) {
      idx.store(a, static_cast<int>(n));
    } else {
      std::copy(idx.begin(), idx.begin() + n, a);
    }
  }
};

// ------------------------------------------------------------------------------------------------
// Forward tiles of one RoI: tile[(p * pw + q) * nc + c] = bin (p, q) of the c-th channel at base, c < nc.
template <typename scalar_t, typename T>
void avg_tile(const RoiTable<T>& t, const scalar_t* base, int64_t ps, int64_t W, int64_t ph, int64_t pw, int64_t nc,
              T* tile) {
  using Vec = Vectorized<T>;
  constexpr int64_t V = Vec::size();
  const Vec count(t.count);
  for (int64_t p = 0; p < ph; ++p) {
    const int ny = t.y.count(p);
    const AxisSample<T>* ys = t.y.bin(p);
    for (int64_t q = 0; q < pw; ++q) {
      const int nx = t.x.count(q);
      const AxisSample<T>* xs = t.x.bin(q);
      T* dst = tile + (p * pw + q) * nc;
      for (int64_t j = 0; j < nc; j += V) {
        const int64_t n = std::min(V, nc - j);
        Vec sum(T(0));
        for (int a = 0; a < ny; ++a) {  // nchw::avg_bins, a vector of channels at a time
          const AxisSample<T> sy = ys[a];
          const scalar_t* rl = base + sy.lo * W * ps + j;
          const scalar_t* rh = base + sy.hi * W * ps + j;
          Vec lo(T(0)), hi(T(0));
          for (int b = 0; b < nx; ++b) {
            const AxisSample<T> sx = xs[b];
            const Vec wl(sx.wlo), wh(sx.whi);
            lo = lo + (wl * load(rl + sx.lo * ps, n) + wh * load(rl + sx.hi * ps, n));
            hi = hi + (wl * load(rh + sx.lo * ps, n) + wh * load(rh + sx.hi * ps, n));
          }
          sum = sum + (Vec(sy.wlo) * lo + Vec(sy.whi) * hi);
        }
        (sum / count).store(dst + j, static_cast<int>(n));
      }
    }
  }
}

template <typename scalar_t, typename T>
void max_tile(const RoiTable<T>& t, const scalar_t* base, int64_t ps, int64_t W, int64_t ph, int64_t pw, int64_t nc,
              T* tile, int32_t* atile) {
  using Vec = Vectorized<T>;
  constexpr int64_t V = Vec::size();
  const int gh = t.y.geom.grid, gw = t.x.geom.grid;
  for (int64_t p = 0; p < ph; ++p) {
    const int ny = t.y.count(p), y0 = t.y.first[p];
    const AxisSample<T>* ys = t.y.bin(p);
    for (int64_t q = 0; q < pw; ++q) {
      const int nx = t.x.count(q), x0 = t.x.first[q];
      const AxisSample<T>* xs = t.x.bin(q);
      const int fi = first_invalid(gh, gw, y0, y0 + ny, x0, x0 + nx);
      T* dst = tile + (p * pw + q) * nc;
      int32_t* adst = atile + (p * pw + q) * nc;
      for (int64_t j = 0; j < nc; j += V) {
        const int64_t n = std::min(V, nc - j);
        Winner<T> win;
        win.reset(Vec(T(0)), -1);  // no valid sample: 0, unless an invalid one wins below
        for (int a = 0; a < ny; ++a) {
          const AxisSample<T> sy = ys[a];
          const scalar_t* rl = base + sy.lo * W * ps + j;
          const scalar_t* rh = base + sy.hi * W * ps + j;
          for (int b = 0; b < nx; ++b) {
            const AxisSample<T> sx = xs[b];
            const Weights<T> w = weights<T>(sy, sx);
            const Vec v = Vec(w.w1) * load(rl + sx.lo * ps, n) + Vec(w.w2) * load(rl + sx.hi * ps, n) +
                          Vec(w.w3) * load(rh + sx.lo * ps, n) + Vec(w.w4) * load(rh + sx.hi * ps, n);
            const int idx = (y0 + a) * gw + (x0 + b);
            if (a == 0 && b == 0) {
              win.reset(v, idx);  // the first valid sample wins outright (max_step with bi < 0)
            } else {
              win.step(v, idx);
            }
          }
        }
        win.store(dst + j, adst + j, n);
        for (int64_t c = j; c < j + n; ++c) {
          T best = dst[c];
          int bi = adst[c];
          max_invalid_zero<T>(fi, &best, &bi);
          dst[c] = bi < 0 ? T(0) : best;
          adst[c] = bi;
        }
      }
    }
  }
}

template <typename scalar_t, typename T>
void pool_tile(const PoolBins& bins, int64_t k, const scalar_t* base, int64_t ps, int64_t W, int64_t ph, int64_t pw,
               int64_t nc, T* tile, int32_t* atile) {
  using Vec = Vectorized<T>;
  constexpr int64_t V = Vec::size();
  for (int64_t p = 0; p < ph; ++p) {
    const int64_t hs = bins.hs[k * ph + p], he = bins.he[k * ph + p];
    for (int64_t q = 0; q < pw; ++q) {
      const int64_t ws = bins.ws[k * pw + q], we = bins.we[k * pw + q];
      T* dst = tile + (p * pw + q) * nc;
      int32_t* adst = atile + (p * pw + q) * nc;
      if (he <= hs || we <= ws) {  // empty bin: 0, argmax -1
        std::fill(dst, dst + nc, T(0));
        std::fill(adst, adst + nc, -1);
        continue;
      }
      for (int64_t j = 0; j < nc; j += V) {
        const int64_t n = std::min(V, nc - j);
        Winner<T> win;
        win.reset(Vec(T(-FLT_MAX)), -1);
        for (int64_t h = hs; h < he; ++h) {
          for (int64_t w = ws; w < we; ++w) {
            win.step(load(base + (h * W + w) * ps + j, n), static_cast<int32_t>(h * W + w));
          }
        }
        win.store(dst + j, adst + j, n);
      }
    }
  }
}

// Avg RoIAlign / RoIWarp: nchw::sampled_backward's terms, a vector of channels at a time.
template <typename T>
void avg_scatter(const RoiTable<T>& t, const T* gt, T* base, int64_t ps, int64_t W, int64_t ph, int64_t pw,
                 int64_t nc) {
  using Vec = Vectorized<T>;
  constexpr int64_t V = Vec::size();
  const Vec count(t.count);
  for (int64_t p = 0; p < ph; ++p) {
    const int ny = t.y.count(p);
    const AxisSample<T>* ys = t.y.bin(p);
    for (int64_t q = 0; q < pw; ++q) {
      const int nx = t.x.count(q);
      const AxisSample<T>* xs = t.x.bin(q);
      for (int64_t j = 0; j < nc; j += V) {
        const int64_t n = std::min(V, nc - j);
        const Vec gs = load(gt + (p * pw + q) * nc + j, n) / count;
        for (int a = 0; a < ny; ++a) {
          const AxisSample<T> sy = ys[a];
          T* rl = base + sy.lo * W * ps + j;
          T* rh = base + sy.hi * W * ps + j;
          for (int b = 0; b < nx; ++b) {
            const AxisSample<T> sx = xs[b];
            add_to(rl + sx.lo * ps, gs * Vec(sy.wlo * sx.wlo), n);
            add_to(rl + sx.hi * ps, gs * Vec(sy.wlo * sx.whi), n);
            add_to(rh + sx.lo * ps, gs * Vec(sy.whi * sx.wlo), n);
            add_to(rh + sx.hi * ps, gs * Vec(sy.whi * sx.whi), n);
          }
        }
      }
    }
  }
}

// Max modes: each channel's gradient to the neighbours of its own winning sample, channel by channel.
template <typename T>
bool max_scatter_tile(const RoiTable<T>& t, const T* gt, const int32_t* at, T* base, int64_t ps, int64_t W,
                      int64_t ph, int64_t pw, int64_t nc) {
  bool ok = true;
  for (int64_t c = 0; c < nc; ++c) ok = max_scatter<T, T>(t, gt + c, at + c, nc, base + c, ps, W, ph, pw) && ok;
  return ok;
}

// Bins of at most this many cells take the masked vector path of pool_scatter_tile (a masked add per cell
// instead of one scalar add per channel).
constexpr int64_t kMaskedPoolCells = 16;

// RoIPool: each channel's gradient to its argmax pixel (pixel i at base[i * ps]); HW pixels in the map.
template <typename T>
bool pool_scatter_tile(const PoolBins& bins, int64_t k, const T* gt, const int32_t* at, T* base, int64_t ps,
                       int64_t W, int64_t HW, int64_t ph, int64_t pw, int64_t nc) {
  using Vec = Vectorized<T>;
  using VecI = Vectorized<int32_t>;
  constexpr int64_t V = Vec::size();
  bool ok = true;
  for (int64_t p = 0; p < ph; ++p) {
    const int64_t hs = bins.hs[k * ph + p], he = bins.he[k * ph + p];
    for (int64_t q = 0; q < pw; ++q) {
      const int64_t ws = bins.ws[k * pw + q], we = bins.we[k * pw + q];
      const int64_t cells = he > hs && we > ws ? (he - hs) * (we - ws) : 0;
      const int64_t i = (p * pw + q) * nc;
      for (int64_t j = 0; j < nc; j += V) {
        const int64_t n = std::min(V, nc - j);
        if constexpr (Winner<T>::kIntLanes) {
          if (n == V && cells <= kMaskedPoolCells) {
            // Each cell adds g where the argmax is that cell (and +0 elsewhere, which changes no sum: a sum that
            // starts at +0 is never -0). A lane whose argmax lies outside the bin (no forward writes one) is
            // added on its own after.
            const Vec gv = Vec::loadu(gt + i + j);
            const VecI av = VecI::loadu(at + i + j);
            VecI covered(0);
            for (int64_t h = hs; h < he; ++h) {
              for (int64_t w = ws; w < we; ++w) {
                const VecI m = av == VecI(static_cast<int32_t>(h * W + w));
                covered = covered | m;
                add_to(base + (h * W + w) * ps + j, Vec::blendv(Vec(T(0)), gv, at::vec::cast<T>(m)), V);
              }
            }
            const VecI stray = (av >= VecI(0)) & (covered ^ VecI(-1));
            const int regular = at::vec::cast<T>(stray).zero_mask();  // bit c: lane c is no stray
            for (int64_t c = 0; regular != (1 << V) - 1 && c < V; ++c) {
              if (!(regular >> c & 1)) {
                ok = pool_scatter<T, T>(gt + i + j + c, at + i + j + c, 1, 1, base + j + c, ps, HW) && ok;
              }
            }
            continue;
          }
        }
        for (int64_t c = j; c < j + n; ++c) {
          ok = pool_scatter<T, T>(gt + i + c, at + i + c, 1, 1, base + c, ps, HW) && ok;
        }
      }
    }
  }
  return ok;
}

}  // namespace vec_bins
}  // namespace roi_ops
