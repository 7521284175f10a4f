// The backward of one RoI on one channel for the argmax-based ops (max-mode RoIAlign / RoIWarp and RoIPool),
// shared by both layouts: each bin's gradient goes where its argmax says, so there is nothing to vectorise
// across channels (every channel has its own winner). NCHW calls them with unit strides; nhwc.h with the
// channel tile's strides (gs = channels of the tile, ps = C).
//
// g[i * gs] / a[i * gs]: upstream gradient and argmax of bin i = p * pw + q. gi: the gradient of the channel,
// pixel (y, x) at gi[(y * W + x) * ps]. They return false for an argmax no forward could have produced.
#pragma once

#include <stdint.h>

#include "tables.h"

namespace roi_ops {

// Max mode: the four bilinear neighbours of the winning sample, in the order (lo, lo), (lo, hi), (hi, lo),
// (hi, hi); coinciding neighbours (snapped at the border) and zero weights included.
template <typename G, typename T>
inline bool max_scatter(const RoiTable<T>& t, const G* g, const int32_t* a, int64_t gs, T* gi, int64_t ps,
                        int64_t W, int64_t ph, int64_t pw) {
  bool ok = true;
  const int gh = t.y.geom.grid, gw = t.x.geom.grid;
  for (int64_t p = 0; p < ph; ++p) {
    for (int64_t q = 0; q < pw; ++q) {
      const int64_t i = (p * pw + q) * gs;
      const int32_t idx = a[i];
      if (idx < 0) continue;
      if (gw <= 0 || idx >= static_cast<int64_t>(gh) * gw) {
        ok = false;
        continue;
      }
      const T gv = static_cast<T>(g[i]);
      const int iy = idx / gw - t.y.first[p], ix = idx % gw - t.x.first[q];
      if (iy < 0 || iy >= t.y.count(p) || ix < 0 || ix >= t.x.count(q)) continue;  // outside the map
      const AxisSample<T> sy = t.y.bin(p)[iy];
      const AxisSample<T> sx = t.x.bin(q)[ix];
      T* rl = gi + sy.lo * W * ps;
      T* rh = gi + sy.hi * W * ps;
      rl[sx.lo * ps] += gv * (sy.wlo * sx.wlo);
      rl[sx.hi * ps] += gv * (sy.wlo * sx.whi);
      rh[sx.lo * ps] += gv * (sy.whi * sx.wlo);
      rh[sx.hi * ps] += gv * (sy.whi * sx.whi);
    }
  }
  return ok;
}

// RoIPool: the gradient of each of the n bins goes to its argmax pixel (-1: an empty bin, nothing).
template <typename G, typename T>
inline bool pool_scatter(const G* g, const int32_t* a, int64_t gs, int64_t n, T* gi, int64_t ps, int64_t HW) {
  bool ok = true;
  for (int64_t i = 0; i < n; ++i) {
    const int32_t idx = a[i * gs];
    if (idx < 0) continue;
    if (idx >= HW) {
      ok = false;
      continue;
    }
    gi[idx * ps] += static_cast<T>(g[i * gs]);
  }
  return ok;
}

}  // namespace roi_ops
