// The CPU kernels on NCHW maps: one (n, c) plane at a time, scalar.
//
//   forward : parallel over the (n, c) planes; each visits the RoIs of image n, so the plane stays in cache
//             while all of them read it. Output [K, C, ph, pw] is written (k, c) by (k, c).
//   backward: parallel over blocks of (n, c) planes of grad_input (of every level). Each item owns its planes
//             and visits the RoIs of image n in ascending order, so there are no atomics and the result is bitwise
//             deterministic (independent of the number of threads), with the summation order per element of a
//             sequential loop over RoIs. blocked.h adds in the same order, so every route gives the same bits.
//   plane order: work item i is the plane (n = i % N, c = i / N), so the contiguous item range of each thread
//             spans all images (one image per thread would leave the threads as unbalanced as the images' RoI
//             counts / areas, 10-20% on the bench workload).
//
// Where this layout wins over nhwc.h: see layout.h.
#pragma once

#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cfloat>
#include <vector>

#include "parallel.h"
#include "scatter.h"
#include "tables.h"

namespace roi_ops {
namespace nchw {

using ByImage = std::vector<std::vector<int64_t>>;

// ------------------------------------------------------------------------------------------------
// RoIAlign / RoIWarp forward of one RoI on one plane
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

// in[l]: map l [N, C, H_l, W_l]; out / am: [K, C, ph, pw] (am only in max mode).
template <typename scalar_t, typename T>
void sampled_forward(const std::vector<const scalar_t*>& in, const std::vector<RoiTable<T>>& tables,
                     const ByImage& by_image, const Levels& lv, int64_t ph, int64_t pw, bool max_mode,
                     scalar_t* out, int32_t* am, int threads) {
  const int64_t N = lv.N, C = lv.C;
  at::parallel_for(0, N * C, threads > 1 ? 1 : N * C, [&](int64_t b, int64_t e) {
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
}

// ------------------------------------------------------------------------------------------------
// RoIPool forward. Max + argmax of every bin of one RoI on one plane; the first maximum in raster order wins.
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

template <typename scalar_t, typename T>
void pool_forward(const std::vector<const scalar_t*>& in, const PoolBins& bins, const ByImage& by_image,
                  const Levels& lv, int64_t ph, int64_t pw, scalar_t* out, int32_t* am, int threads) {
  const int64_t N = lv.N, C = lv.C;
  at::parallel_for(0, N * C, threads > 1 ? 1 : N * C, [&](int64_t b, int64_t e) {
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
}

// ------------------------------------------------------------------------------------------------
// Backward (shared by all ops): acc[l] is level l's gradient [N, C, H_l, W_l] in T, zeroed here by the owner of
// each plane. A work item owns the planes of kPlanesPerItem channels of one image (scheduled dynamically) and
// visits the image's RoIs in ascending order, adding each one's channels in turn: the upstream gradient of those
// channels is one contiguous block per RoI, and the planes stay in cache. add(k, c, plane of RoI k's level) adds
// RoI k's contribution on channel c; it returns false for a corrupt argmax.
constexpr int64_t kPlanesPerItem = 16;

template <typename T, typename AddRoi>
void scatter(const std::vector<T*>& acc, const Levels& lv, const ByImage& by_image, const AddRoi& add,
             const char* bad_argmax_message, int threads) {
  const int64_t N = lv.N, C = lv.C, L = lv.count(), nb = (C + kPlanesPerItem - 1) / kPlanesPerItem;
  std::atomic<bool> bad_argmax{false};
  parallel_dynamic(N * nb, threads, [&](int64_t item, int) {
    const int64_t n = item % N, c0 = item / N * kPlanesPerItem, c1 = std::min(C, c0 + kPlanesPerItem);
    for (int64_t l = 0; l < L; ++l) {
      std::fill(acc[l] + (n * C + c0) * lv.plane(l), acc[l] + (n * C + c1) * lv.plane(l), T(0));
    }
    for (const int64_t k : by_image[n]) {
      const int64_t l = lv.of(k);
      for (int64_t c = c0; c < c1; ++c) {
        if (!add(k, c, acc[l] + (n * C + c) * lv.plane(l))) bad_argmax = true;
      }
    }
  });
  TORCH_CHECK(!bad_argmax.load(), bad_argmax_message);
}

// RoIAlign / RoIWarp. g (and am in max mode): [K, C, ph, pw].
template <typename scalar_t, typename T>
void sampled_backward(const scalar_t* g, const int32_t* am, const std::vector<RoiTable<T>>& tables,
                      const ByImage& by_image, const Levels& lv, int64_t ph, int64_t pw, bool max_mode,
                      const std::vector<T*>& acc, const char* bad_argmax_message, int threads) {
  const int64_t C = lv.C, PP = ph * pw;
  const auto add = [&](int64_t k, int64_t c, T* gi) {
    const RoiTable<T>& t = tables[k];
    const int64_t W = lv.W[lv.of(k)];
    const scalar_t* gk = g + (k * C + c) * PP;
    if (max_mode) return max_scatter<scalar_t, T>(t, gk, am + (k * C + c) * PP, 1, gi, 1, W, ph, pw);
    for (int64_t p = 0; p < ph; ++p) {
      const int ny = t.y.count(p);
      const AxisSample<T>* ys = t.y.bin(p);
      for (int64_t q = 0; q < pw; ++q) {
        const T gv = static_cast<T>(gk[p * pw + q]);
        if (gv == T(0)) continue;
        // g / count once per bin, then g * w per neighbour: the order of nhwc.h's vectors (and the GPU's).
        const T gs = gv / t.count;
        const int nx = t.x.count(q);
        const AxisSample<T>* xs = t.x.bin(q);
        for (int a = 0; a < ny; ++a) {
          const AxisSample<T> sy = ys[a];
          T* rl = gi + sy.lo * W;
          T* rh = gi + sy.hi * W;
          for (int bb = 0; bb < nx; ++bb) {
            const AxisSample<T> sx = xs[bb];
            rl[sx.lo] += gs * (sy.wlo * sx.wlo);
            rl[sx.hi] += gs * (sy.wlo * sx.whi);
            rh[sx.lo] += gs * (sy.whi * sx.wlo);
            rh[sx.hi] += gs * (sy.whi * sx.whi);
          }
        }
      }
    }
    return true;
  };
  scatter<T>(acc, lv, by_image, add, bad_argmax_message, threads);
}

// RoIPool. g / am: [K, C, ph, pw].
template <typename scalar_t, typename T>
void pool_backward(const scalar_t* g, const int32_t* am, const ByImage& by_image, const Levels& lv, int64_t PP,
                   const std::vector<T*>& acc, const char* bad_argmax_message, int threads) {
  const int64_t C = lv.C;
  const auto add = [&](int64_t k, int64_t c, T* gi) {
    const int64_t o = (k * C + c) * PP;
    return pool_scatter<scalar_t, T>(g + o, am + o, 1, PP, gi, 1, lv.plane(lv.of(k)));
  };
  scatter<T>(acc, lv, by_image, add, bad_argmax_message, threads);
}

}  // namespace nchw
}  // namespace roi_ops
