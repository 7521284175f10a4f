// new_buffer(): uninitialized contiguous CPU tensors for the CPU kernels' large outputs.
//
// Every op writes its (large) outputs exactly once right after allocating them. Fresh multi-MB buffers come
// straight from mmap, so with 4 KiB pages the first touch costs a page fault per 4 KiB: ~0.25 ms per MB on the
// 2-core dev machine, as much time as the whole RoIPool 14x14 kernel spends computing (the bench writes 411 MB
// of output + argmax per forward). On Linux, buffers >= 4 MiB are therefore 2 MiB-aligned and advised
// MADV_HUGEPAGE (transparent huge pages; what torch does for every allocation under THP_MEM_ALLOC_ENABLE=1,
// here only for our outputs): ~4x cheaper first touch. Where THP is off the advice is ignored and nothing
// changes. ROI_OPS_HUGEPAGES=0 disables it; elsewhere than Linux new_buffer is at::empty.
#pragma once

#include <ATen/ATen.h>
#include <ATen/EmptyTensor.h>

#if defined(__linux__)
#include <sys/mman.h>

#include <cstdlib>
#include <new>
#include <string>
#endif

namespace roi_ops {

#if defined(__linux__)
struct HugePageAllocator final : c10::Allocator {
  static constexpr size_t kHuge = size_t(2) << 20;
  c10::DataPtr allocate(size_t n) override {
    void* p = nullptr;
    if (posix_memalign(&p, kHuge, n > 0 ? n : 1) != 0) throw std::bad_alloc();
    const size_t whole = n / kHuge * kHuge;  // only pages that belong to this buffer alone
    if (whole > 0) (void)madvise(p, whole, MADV_HUGEPAGE);
    return {p, p, &release, c10::Device(c10::DeviceType::CPU)};
  }
  static void release(void* p) { std::free(p); }
  c10::DeleterFnPtr raw_deleter() const override { return &release; }
  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }
};

inline bool hugepages_enabled() {
  static const bool on = [] {
    const char* v = std::getenv("ROI_OPS_HUGEPAGES");
    return v == nullptr || std::string(v) != "0";
  }();
  return on;
}
#endif

// Uninitialized contiguous CPU tensor (huge-page backed when large, on Linux).
inline at::Tensor new_buffer(at::IntArrayRef sizes, at::ScalarType dtype) {
#if defined(__linux__)
  int64_t numel = 1;
  for (const int64_t s : sizes) numel *= s;
  if (hugepages_enabled() && numel * static_cast<int64_t>(c10::elementSize(dtype)) >= (int64_t(4) << 20)) {
    static HugePageAllocator allocator;
    return at::detail::empty_generic(sizes, &allocator, c10::DispatchKeySet(c10::DispatchKey::CPU), dtype,
                                     std::nullopt);
  }
#endif
  return at::empty(sizes, at::TensorOptions().dtype(dtype).device(at::kCPU));
}

}  // namespace roi_ops
