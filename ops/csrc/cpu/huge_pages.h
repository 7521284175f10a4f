// new_buffer(): uninitialized contiguous CPU tensors for the CPU kernels' large outputs.
//
// Every op writes its (large) outputs exactly once right after allocating them. Fresh multi-MB buffers come
// straight from mmap, so with 4 KiB pages the first touch costs a page fault per 4 KiB: ~0.25 ms per MB on the
// 2-core dev machine, as much time as the whole RoIPool 14x14 kernel spends computing (the bench writes 411 MB
// of output + argmax per forward). On Linux, buffers >= 4 MiB are therefore 2 MiB-aligned and advised
// MADV_HUGEPAGE (transparent huge pages; what torch does for every allocation under THP_MEM_ALLOC_ENABLE=1,
// here only for our outputs): ~4x cheaper first touch. Where THP is off the advice is ignored and nothing
// changes. Freed buffers are recycled (BufferCache below). ROI_OPS_HUGEPAGES=0 disables both; elsewhere than
// Linux new_buffer is at::empty.
#pragma once

#include <ATen/ATen.h>
#include <ATen/EmptyTensor.h>

#if defined(__linux__)
#include <sys/mman.h>

#include <cstddef>
#include <cstdlib>
#include <mutex>
#include <new>
#include <string>
#include <vector>
#endif

namespace roi_ops {

#if defined(__linux__)
// Freed buffers kept for reuse, up to ROI_OPS_BUFFER_CACHE_MB (default 1024; 0 keeps none). A training loop asks for
// outputs and gradients of the same sizes every step, and a fresh buffer costs a page fault and the kernel's
// zeroing of every page at its first touch (on the bench workload that was 15-20% of a RoIPool forward + backward);
// a recycled one costs neither. Blocks are whole 2 MiB pages; a request takes the smallest cached block that is
// at most 1.25x its size. The cache is never destroyed (tensors may be freed during interpreter exit).
class BufferCache {
 public:
  struct Block {
    void* p;
    size_t bytes;
  };
  static BufferCache& get() {
    static BufferCache* cache = new BufferCache();
    return *cache;
  }
  bool take(size_t bytes, Block* out) {
    std::lock_guard<std::mutex> lock(mutex_);
    size_t best = free_.size();
    for (size_t i = 0; i < free_.size(); ++i) {
      const size_t b = free_[i].bytes;
      if (b >= bytes && b <= bytes + bytes / 4 && (best == free_.size() || b < free_[best].bytes)) best = i;
    }
    if (best == free_.size()) return false;
    *out = free_[best];
    free_.erase(free_.begin() + static_cast<std::ptrdiff_t>(best));
    held_ -= out->bytes;
    return true;
  }
  bool keep(const Block& b) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (held_ + b.bytes > capacity_) return false;
    free_.push_back(b);
    held_ += b.bytes;
    return true;
  }

 private:
  BufferCache() {
    const char* v = std::getenv("ROI_OPS_BUFFER_CACHE_MB");
    capacity_ = static_cast<size_t>(v != nullptr ? std::strtoull(v, nullptr, 10) : 1024) << 20;
  }
  std::mutex mutex_;
  std::vector<Block> free_;
  size_t held_ = 0, capacity_ = 0;
};

struct HugePageAllocator final : c10::Allocator {
  static constexpr size_t kHuge = size_t(2) << 20;
  c10::DataPtr allocate(size_t n) override {
    BufferCache::Block b{nullptr, (n + kHuge - 1) / kHuge * kHuge};  // whole huge pages
    if (b.bytes == 0) b.bytes = kHuge;
    if (!BufferCache::get().take(b.bytes, &b)) {
      if (posix_memalign(&b.p, kHuge, b.bytes) != 0) throw std::bad_alloc();
      (void)madvise(b.p, b.bytes, MADV_HUGEPAGE);
    }
    return {b.p, new BufferCache::Block(b), &release, c10::Device(c10::DeviceType::CPU)};
  }
  static void release(void* ctx) {
    const BufferCache::Block* b = static_cast<BufferCache::Block*>(ctx);
    if (!BufferCache::get().keep(*b)) std::free(b->p);
    delete b;
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

}  // namespace roi_ops
