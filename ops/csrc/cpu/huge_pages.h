// new_buffer() / new_zeroed_buffer(): contiguous CPU tensors for the CPU kernels' large outputs.
//
// Every op writes its (large) outputs exactly once right after allocating them. Fresh multi-MB buffers come
// straight from mmap, so with 4 KiB pages the first touch costs a page fault per 4 KiB: ~0.25 ms per MB on the
// 2-core dev machine, as much time as the whole RoIPool 14x14 kernel spends computing (the bench writes 411 MB
// of output + argmax per forward). On Linux, buffers >= 4 MiB are therefore 2 MiB-aligned and advised
// MADV_HUGEPAGE (transparent huge pages; what torch does for every allocation under THP_MEM_ALLOC_ENABLE=1,
// here only for our outputs): ~4x cheaper first touch. Where THP is off the advice is ignored and nothing
// changes. ROI_OPS_HUGEPAGES=0 disables it; elsewhere than Linux new_buffer is at::empty.
//
// The backward's gradients are sums, so they start at zero. The kernel hands out fresh anonymous pages zeroed
// already (it zeroes each page at its first touch, a cost no allocation avoids), so new_zeroed_buffer maps
// them itself and does not zero them a second time: at::zeros would (one more pass over the gradients of
// every level, 12% of a channels_last RoIAlign forward + backward on the bench workload).
#pragma once

#include <ATen/ATen.h>
#include <ATen/EmptyTensor.h>

#if defined(__linux__)
#include <sys/mman.h>

#include <cstdint>
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

// Fresh anonymous mappings (zero-filled by the kernel), 2 MiB-aligned and advised MADV_HUGEPAGE.
struct ZeroedHugePageAllocator final : c10::Allocator {
  static constexpr size_t kHuge = HugePageAllocator::kHuge;
  struct Mapping {
    void* base;
    size_t length;
  };
  c10::DataPtr allocate(size_t n) override {
    const size_t length = (n > 0 ? n : 1) + kHuge;  // room to align the start
    void* base = mmap(nullptr, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED) throw std::bad_alloc();
    const uintptr_t start = (reinterpret_cast<uintptr_t>(base) + kHuge - 1) / kHuge * kHuge;
    void* p = reinterpret_cast<void*>(start);
    if (n / kHuge > 0) (void)madvise(p, n / kHuge * kHuge, MADV_HUGEPAGE);
    return {p, new Mapping{base, length}, &release, c10::Device(c10::DeviceType::CPU)};
  }
  static void release(void* ctx) {
    const Mapping* m = static_cast<Mapping*>(ctx);
    munmap(m->base, m->length);
    delete m;
  }
  c10::DeleterFnPtr raw_deleter() const override { return nullptr; }  // the context, not the pointer, frees
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

// Zero-filled contiguous CPU tensor (fresh huge-page-advised pages when large, on Linux).
inline at::Tensor new_zeroed_buffer(at::IntArrayRef sizes, at::ScalarType dtype) {
#if defined(__linux__)
  int64_t numel = 1;
  for (const int64_t s : sizes) numel *= s;
  if (hugepages_enabled() && numel * static_cast<int64_t>(c10::elementSize(dtype)) >= (int64_t(4) << 20)) {
    static ZeroedHugePageAllocator allocator;
    return at::detail::empty_generic(sizes, &allocator, c10::DispatchKeySet(c10::DispatchKey::CPU), dtype,
                                     std::nullopt);
  }
#endif
  return at::zeros(sizes, at::TensorOptions().dtype(dtype).device(at::kCPU));
}

}  // namespace roi_ops
