// Host-side argument checks of the one schema pair (multilevel_roi_forward / multilevel_roi_backward), shared
// by the CPU kernels (roi_ops.cpp), the CUDA entry points and their CPU emulation (roi_driver.h).
//
// They keep a direct torch.ops call from crashing: shapes, dtypes, devices and sizes only, never a value that
// lives on the device (that would be a host sync). Shapes: inputs L x [N, C, H_l, W_l], rois [K, 5],
// levels Int64[K] or None (one map), grad and argmax [K, C, ph, pw].
#pragma once

#include <ATen/ATen.h>

#include <cmath>
#include <optional>
#include <string>

namespace roi_ops {

using at::Tensor;

// Coordinate (and accumulation) type of the rois for an input dtype: double for double, else float.
inline at::ScalarType coord_type(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

// rois come in the input dtype or in its coordinate type (float32 rois for half/bfloat16 input: box
// coordinates rounded to 8 mantissa bits would move by pixels).
inline void check_rois_dtype(const Tensor& x, const Tensor& rois, const char* what, const char* op) {
  const at::ScalarType t = x.scalar_type(), r = rois.scalar_type();
  TORCH_CHECK(r == t || r == coord_type(t), op, ": rois must have the dtype of ", what, " (", t, ") or ",
              coord_type(t), ", got ", r);
}

enum class OpKind { Align, Warp, Pool };

inline OpKind op_kind(c10::string_view kind, const char* op) {
  if (kind == "align") return OpKind::Align;
  if (kind == "warp") return OpKind::Warp;
  TORCH_CHECK(kind == "pool", op, ": kind must be 'align', 'warp' or 'pool', got '", std::string(kind), "'");
  return OpKind::Pool;
}

inline void check_rois(const Tensor& rois, const Tensor& like, const char* what, int64_t ph, int64_t pw,
                       const char* op) {
  TORCH_CHECK(rois.dim() == 2 && rois.size(1) == 5, op, ": rois must be [K, 5], got ", rois.sizes());
  TORCH_CHECK(rois.device() == like.device(), op, ": rois (", rois.device(), ") and ", what, " (", like.device(),
              ") must be on the same device");
  check_rois_dtype(like, rois, what, op);
  TORCH_CHECK(ph > 0 && pw > 0, op, ": pooled size must be positive, got ", ph, "x", pw);
}

inline void check_scales(at::ArrayRef<double> scales, size_t L, const char* op) {
  TORCH_CHECK(L > 0, op, ": needs at least one feature map");
  TORCH_CHECK(scales.size() == L, op, ": got ", L, " feature maps but ", scales.size(), " spatial scales");
  for (size_t l = 0; l < L; ++l) {
    TORCH_CHECK(std::isfinite(scales[l]) && scales[l] > 0, op, ": spatial scale ", l, " must be finite and > 0, got ",
                scales[l]);
  }
}

// levels: int64 [K] on the rois' device; None only for a single map (every RoI reads map 0).
inline void check_levels(const std::optional<Tensor>& levels, const Tensor& rois, size_t L, const char* op) {
  if (!levels.has_value()) {
    TORCH_CHECK(L == 1, op, ": levels may be None only with one feature map, got ", L);
    return;
  }
  const Tensor& lv = *levels;
  TORCH_CHECK(lv.scalar_type() == at::kLong && lv.dim() == 1 && lv.size(0) == rois.size(0), op,
              ": levels must be an int64 [K] = [", rois.size(0), "] tensor, got ", lv.scalar_type(), " ", lv.sizes());
  TORCH_CHECK(lv.device() == rois.device(), op, ": levels (", lv.device(), ") and rois (", rois.device(),
              ") must be on the same device");
}

// Forward: the maps agree with each other (dtype, device, N, C) and with the rois and levels.
inline void check_forward(at::TensorList inputs, const Tensor& rois, const std::optional<Tensor>& levels,
                          at::ArrayRef<double> scales, int64_t ph, int64_t pw, const char* op) {
  check_scales(scales, inputs.size(), op);
  const Tensor& x0 = inputs[0];
  for (size_t l = 0; l < inputs.size(); ++l) {
    const Tensor& x = inputs[l];
    TORCH_CHECK(x.dim() == 4, op, ": feature map ", l, " must be 4-D [N, C, H, W], got ", x.sizes());
    TORCH_CHECK(x.scalar_type() == x0.scalar_type() && x.device() == x0.device() && x.size(0) == x0.size(0) &&
                    x.size(1) == x0.size(1),
                op, ": feature map ", l, " is ", x.scalar_type(), " ", x.sizes(), " on ", x.device(), " but map 0 is ",
                x0.scalar_type(), " ", x0.sizes(), " on ", x0.device(), "; all maps need the same dtype, device, N and C");
  }
  check_rois(rois, x0, "input", ph, pw, op);
  check_levels(levels, rois, inputs.size(), op);
}

// Backward: grad [K, C, ph, pw] and (max modes and RoIPool) argmax of the same shape; one (H, W) per level.
inline void check_backward(const Tensor& grad, const Tensor& rois, const std::optional<Tensor>& levels,
                           const Tensor& argmax, bool need_argmax, at::ArrayRef<double> scales, int64_t ph, int64_t pw,
                           int64_t N, int64_t C, at::IntArrayRef heights, at::IntArrayRef widths, const char* op) {
  const size_t L = heights.size();
  check_scales(scales, L, op);
  TORCH_CHECK(widths.size() == L, op, ": got ", L, " heights but ", widths.size(), " widths");
  TORCH_CHECK(N >= 0 && C >= 0, op, ": negative input size");
  for (size_t l = 0; l < L; ++l) TORCH_CHECK(heights[l] >= 0 && widths[l] >= 0, op, ": negative size of map ", l);
  check_rois(rois, grad, "grad", ph, pw, op);
  TORCH_CHECK(grad.dim() == 4 && grad.size(0) == rois.size(0) && grad.size(1) == C && grad.size(2) == ph &&
                  grad.size(3) == pw,
              op, ": grad must be [K, C, ph, pw] = [", rois.size(0), ", ", C, ", ", ph, ", ", pw, "], got ",
              grad.sizes());
  check_levels(levels, rois, L, op);
  if (need_argmax) {
    TORCH_CHECK(argmax.device() == grad.device(), op, ": argmax and grad must be on the same device");
    TORCH_CHECK(argmax.scalar_type() == at::kInt, op, ": argmax must be int32, got ", argmax.scalar_type());
    TORCH_CHECK(argmax.sizes() == grad.sizes(), op, ": argmax must have the shape of grad ", grad.sizes(), ", got ",
                argmax.sizes());
  }
}

}  // namespace roi_ops
