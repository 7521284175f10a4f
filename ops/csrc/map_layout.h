// Which memory layout the maps of a call are in, one rule for every backend (CPU kernels, CUDA driver and its
// emulation) and for the autograd formula in Python (ops/_registration.py), which asks the backward for the
// gradients in the maps' layout.
#pragma once

#include <ATen/ATen.h>

namespace roi_ops {

// NHWC when every map is channels_last and not all of them are also contiguous (a map can be both, e.g. with
// C = 1 or H = W = 1); NCHW otherwise.
inline bool nhwc_maps(at::TensorList maps) {
  bool all_cl = true, all_contig = true;
  for (const at::Tensor& x : maps) {
    all_cl = all_cl && x.is_contiguous(at::MemoryFormat::ChannelsLast);
    all_contig = all_contig && x.is_contiguous();
  }
  return all_cl && !all_contig;
}

}  // namespace roi_ops
