// Which CPU kernels run a call.
//
// Channels_last maps run nhwc.h, in place. NCHW maps run either nchw.h (scalar, plane by plane) or blocked.h
// (blocks of channels transposed in cache, then the vector kernels). The blocked route transposes every pixel of
// the maps (forward) or of the gradients (backward) once, in cache; it saves scalar work per sample and channel.
// So it pays when there are enough bins per map pixel, and when C fills a vector.
#pragma once

#include <ATen/ATen.h>

#include <cstdlib>
#include <string>

#include "tables.h"

namespace roi_ops {

// Bins (K * ph * pw) per map pixel (N * sum of H_l * W_l) from which NCHW maps take blocked.h. Measured with
// bench/roi_ops.py --nchw-kernels on the FPN workload (2-core Xeon, AVX-512, two runs): planes / blocked time for
// 7x7 RoIAlign and RoIPool, forward + backward, 0.6-0.9x at 0.005 bins per pixel, 0.95-1.6x at 0.022, 1.6-3.0x at
// 0.087, 1.8-4.0x at 0.35 (bench/results/roi_ops_nchw_kernels_cpu_*.json). With one channel (the mask-target
// crop) planes is 3x faster: C must fill a vector.
constexpr double kBlockedBinsPerPixel = 0.015;

// ROI_OPS_NCHW_KERNEL=planes|blocked forces the kernels of NCHW maps (for benchmarks); unset or "auto": the rule.
inline bool blocked_pays(const Levels& lv, int64_t K, int64_t PP, int64_t V) {
  const char* env = std::getenv("ROI_OPS_NCHW_KERNEL");
  const std::string force = env != nullptr ? env : "auto";
  TORCH_CHECK(force == "auto" || force == "planes" || force == "blocked",
              "ROI_OPS_NCHW_KERNEL must be auto, planes or blocked, got '", force, "'");
  if (force != "auto") return force == "blocked";
  return lv.C >= V && static_cast<double>(K * PP) >= kBlockedBinsPerPixel * static_cast<double>(lv.pixels());
}

}  // namespace roi_ops
