// The forward on channels_last maps ([N, H, W, C] memory), in place, vectorised over channels (vec_bins.h).
// (Their backward is blocked::backward: it accumulates in cache, not in the gradients themselves.)
//
// Work item = (RoI, channel block), scheduled dynamically. The item computes its bins for its channels into a
// [ph * pw][channels] tile, then transposes the tile into the output [K, C, ph, pw] (a contiguous block per item).
// The channel blocks exist to give every thread work when the RoIs are few; with many RoIs a block is all C
// channels.
#pragma once

#include <ATen/OpMathType.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <vector>

#include "parallel.h"
#include "tables.h"

namespace roi_ops {
namespace nhwc {

using ByImage = std::vector<std::vector<int64_t>>;

// in[l]: map l as [N, H_l, W_l, C]; out / am: [K, C, ph, pw] (am: max modes and RoIPool, else nullptr); on
// `threads` threads (worker_threads).
// tile(k, base, ps, nc, values, argmax) computes RoI k's tiles (vec_bins.h) for the nc channels at base.
template <typename scalar_t, typename T, typename Tile>
void forward(const std::vector<const scalar_t*>& in, const std::vector<int64_t>& image, const Levels& lv, int64_t K,
             int64_t PP, scalar_t* out, int32_t* am, int threads, const Tile& tile) {
  const int64_t C = lv.C;
  const int64_t cb = block_channels(C, K, threads, at::vec::Vectorized<T>::size()), nb = ceil_div(C, cb);
  struct Scratch {
    std::vector<T> values;
    std::vector<int32_t> argmax;
  };
  std::vector<Scratch> scratch(threads);
  parallel_dynamic(K * nb, threads, [&](int64_t item, int thread) {
    const int64_t k = item / nb, c0 = item % nb * cb, nc = std::min(cb, C - c0), l = lv.of(k);
    Scratch& s = scratch[thread];
    s.values.resize(PP * cb);
    s.argmax.resize(am != nullptr ? PP * cb : 0);
    tile(k, in[l] + image[k] * lv.plane(l) * C + c0, C, nc, s.values.data(), s.argmax.data());
    const int64_t o = (k * C + c0) * PP;  // channels c0 .. c0 + nc of RoI k: a contiguous [nc][PP] block
    transpose(s.values.data(), nc, out + o, PP, PP, nc);
    if (am != nullptr) transpose(s.argmax.data(), nc, am + o, PP, PP, nc);
  });
}

}  // namespace nhwc
}  // namespace roi_ops
