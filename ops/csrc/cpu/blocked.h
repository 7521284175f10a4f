// The CPU kernels through channel blocks: the vector kernels of vec_bins.h on a block of channels held in a
// per-thread scratch buffer [pixels][V] in T (V = the vector width), channels innermost.
//
// Work item = (image n, block of V channels), scheduled dynamically:
//   forward (NCHW maps): transpose the block of image n's maps (every level) into the scratch, then compute the
//            tiles of every RoI of image n from it, each transposed into the output [K, C, ph, pw];
//   backward (either layout): the scratch is the block's gradient: zeroed, the RoIs of image n added in ascending
//            order (nchw.h's order, so every route gives the same bits), then written out once, transposed into
//            NCHW gradients or copied into channels_last ones.
// A block stays in cache while the RoIs read it or add to it (one vector per pixel: 72 k pixels of the bench
// workload's image, 4.6 MB of float32), so the maps are read (forward) and the gradients written (backward) once
// from memory, while the sampling runs on vectors. A whole-map channels_last copy would cost a pass over the maps
// more, and fresh memory for it (page faults); accumulating in the gradients themselves would add to memory
// rather than to cache, and would need them zeroed first (one more pass).
#pragma once

#include <ATen/OpMathType.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <atomic>
#include <vector>

#include "parallel.h"
#include "tables.h"

namespace roi_ops {
namespace blocked {

using ByImage = std::vector<std::vector<int64_t>>;

template <typename D, typename S>
D to(S v) {
  return static_cast<D>(v);
}

// First pixel of each level in an image's scratch (levels back to back), and the total.
inline std::vector<int64_t> level_offsets(const Levels& lv) {
  std::vector<int64_t> off(lv.count() + 1, 0);
  for (int64_t l = 0; l < lv.count(); ++l) off[l + 1] = off[l] + lv.plane(l);
  return off;
}

// in[l]: map l [N, C, H_l, W_l]; out / am: [K, C, ph, pw] (am: max modes and RoIPool, else nullptr).
// tile(k, base, ps, nc, values, argmax) computes RoI k's tiles (vec_bins.h) from the scratch (T) at base. On
// `threads` threads (worker_threads), as the backward.
template <typename scalar_t, typename T, typename Tile>
void forward(const std::vector<const scalar_t*>& in, const ByImage& by_image, const Levels& lv, int64_t PP,
             scalar_t* out, int32_t* am, int threads, const Tile& tile) {
  const int64_t N = lv.N, C = lv.C, V = at::vec::Vectorized<T>::size(), nb = ceil_div(C, V);
  const std::vector<int64_t> off = level_offsets(lv);
  struct Scratch {
    std::vector<T> maps, values;
    std::vector<int32_t> argmax;
  };
  std::vector<Scratch> scratch(threads);
  parallel_dynamic(N * nb, threads, [&](int64_t item, int thread) {
    const int64_t n = item % N, c0 = item / N * V, nc = std::min(V, C - c0);
    Scratch& s = scratch[thread];
    s.maps.resize(off.back() * V);
    s.values.resize(PP * V);
    s.argmax.resize(am != nullptr ? PP * V : 0);
    for (int64_t l = 0; l < lv.count(); ++l) {
      transpose(in[l] + (n * C + c0) * lv.plane(l), lv.plane(l), s.maps.data() + off[l] * nc, nc, nc, lv.plane(l));
    }
    for (const int64_t k : by_image[n]) {
      tile(k, static_cast<const T*>(s.maps.data() + off[lv.of(k)] * nc), nc, nc, s.values.data(), s.argmax.data());
      const int64_t o = (k * C + c0) * PP;
      transpose(s.values.data(), nc, out + o, PP, PP, nc);
      if (am != nullptr) transpose(s.argmax.data(), nc, am + o, PP, PP, nc);
    }
  });
}

// grads[l]: level l's gradient [N, C, H_l, W_l] (channels_last: [N, H_l, W_l, C] memory), every element written
// here. g / am: upstream gradient / argmax [K, C, PP]. add(k, nc, gt, at, base, ps) adds RoI k's contribution for
// nc channels given as [PP][nc] tiles gt (T) and at (argmax), into base = its level in the scratch, pixel stride
// ps (vec_bins.h); it returns false for a corrupt argmax.
template <typename scalar_t, typename T, typename AddRoi>
void backward(const scalar_t* g, const int32_t* am, const std::vector<scalar_t*>& grads, bool channels_last,
              const Levels& lv, const ByImage& by_image, int64_t PP, int threads, const AddRoi& add,
              const char* bad_argmax_message) {
  const int64_t N = lv.N, C = lv.C, V = at::vec::Vectorized<T>::size(), nb = ceil_div(C, V);
  const std::vector<int64_t> off = level_offsets(lv);
  struct Scratch {
    std::vector<T> acc, grad;
    std::vector<int32_t> argmax;
  };
  std::vector<Scratch> scratch(threads);
  std::atomic<bool> bad_argmax{false};
  parallel_dynamic(N * nb, threads, [&](int64_t item, int thread) {
    const int64_t n = item % N, c0 = item / N * V, nc = std::min(V, C - c0);
    Scratch& s = scratch[thread];
    s.acc.assign(off.back() * V, T(0));
    s.grad.resize(PP * V);
    s.argmax.resize(am != nullptr ? PP * V : 0);
    for (const int64_t k : by_image[n]) {
      const int64_t o = (k * C + c0) * PP;
      transpose(g + o, PP, s.grad.data(), nc, nc, PP);
      if (am != nullptr) transpose(am + o, PP, s.argmax.data(), nc, nc, PP);
      if (!add(k, nc, s.grad.data(), s.argmax.data(), s.acc.data() + off[lv.of(k)] * nc, nc)) bad_argmax = true;
    }
    for (int64_t l = 0; l < lv.count(); ++l) {
      const T* a = s.acc.data() + off[l] * nc;
      const int64_t HW = lv.plane(l);
      if (!channels_last) {
        transpose(a, nc, grads[l] + (n * C + c0) * HW, HW, HW, nc);
        continue;
      }
      scalar_t* d = grads[l] + n * HW * C + c0;
      for (int64_t px = 0; px < HW; ++px) {
        // Strided writes (nc of every C values) defeat the hardware prefetcher; fetching the lines ahead for
        // writing took 12% off a channels_last RoIAlign forward + backward on the bench workload.
        if (px + 16 < HW) __builtin_prefetch(d + (px + 16) * C, 1);
        std::transform(a + px * nc, a + (px + 1) * nc, d + px * C, to<scalar_t, T>);
      }
    }
  });
  TORCH_CHECK(!bad_argmax.load(), bad_argmax_message);
}

}  // namespace blocked
}  // namespace roi_ops
