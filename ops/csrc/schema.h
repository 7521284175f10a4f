// The argument lists of the one schema pair, shared by the op library (roi_ops.cpp) and the CPU emulation of
// the CUDA kernels (emulation/roi_ops_emulated.cpp), which registers the same pair under another namespace.
//
// kind: "align" | "warp" | "pool" (pool ignores sampling_ratio and aligned; warp ignores aligned). levels is
// None for a single map. argmax is int32 [K, C, ph, pw] for the max modes and RoIPool, else empty.
// channels_last: the backward returns the gradients in that memory format (autograd passes the maps' layout,
// map_layout.h, so a channels_last network gets channels_last gradients without a copy).
#pragma once

namespace roi_ops {

constexpr const char* kForwardSchema =
    "(Tensor[] inputs, Tensor rois, Tensor? levels, float[] spatial_scales, str kind, SymInt pooled_height, "
    "SymInt pooled_width, int sampling_ratio, bool aligned, bool max_mode) -> (Tensor, Tensor)";
constexpr const char* kBackwardSchema =
    "(Tensor grad, Tensor rois, Tensor? levels, Tensor argmax, float[] spatial_scales, str kind, "
    "SymInt pooled_height, SymInt pooled_width, SymInt batch_size, SymInt channels, SymInt[] heights, "
    "SymInt[] widths, int sampling_ratio, bool aligned, bool max_mode, bool channels_last=False) -> Tensor[]";

}  // namespace roi_ops
