// Work distribution and transposes of the NHWC kernels (nhwc.h).
#pragma once

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <atomic>
#include <type_traits>

namespace roi_ops {

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Work items per thread to aim for: enough that uneven items (RoIs of different sizes, images with more RoIs)
// even out across threads.
constexpr int64_t kItemsPerThread = 8;

// Channels per work item, a multiple of the vector width V: all C when `units` (RoIs, or images) already give
// kItemsPerThread items per thread, else C split into as many blocks as that needs (at most one per vector).
inline int64_t block_channels(int64_t C, int64_t units, int threads, int64_t V) {
  const int64_t vectors = ceil_div(C, V);
  const int64_t blocks = std::clamp<int64_t>(ceil_div(kItemsPerThread * threads, std::max<int64_t>(units, 1)), 1,
                                             std::max<int64_t>(vectors, 1));
  return ceil_div(vectors, blocks) * V;
}

// Calls with less work than this (values read and written: C x (4 neighbours x samples, or RoIPool cells, + outputs)
// + the maps or gradients a blocked call transposes) run on the calling thread. Under about a millisecond of work,
// waking and joining the pool's threads costs more than it saves on a busy machine: a mask-target crop (1 channel,
// 32 RoIs, 28 x 28) took 0.9 ms on one thread, and with two threads its 90th percentile was 8-25 ms on the shared
// 2-core development machine (one thread: 3-5 ms).
constexpr double kSerialWork = 2e6;

inline int worker_threads(double work) { return work < kSerialWork ? 1 : at::get_num_threads(); }

// Runs f(item, thread) for items 0 .. n-1 on `threads` threads (thread in [0, threads)), each thread
// taking the next item when it is done with one. Dynamic rather than at::parallel_for's static split: the items
// (RoIs) differ in cost, and on a machine shared with other jobs a descheduled thread would hold back a static
// split for its whole share.
template <typename F>
void parallel_dynamic(int64_t n, int threads, const F& f) {
  std::atomic<int64_t> next{0};
  at::parallel_for(0, threads, 1, [&](int64_t t0, int64_t t1) {
    // One index per thread, except when called inside a parallel region (then t0 = 0, t1 = threads, serial).
    const int thread = static_cast<int>(t1 - t0 == 1 ? t0 : 0);
    for (int64_t i; (i = next.fetch_add(1, std::memory_order_relaxed)) < n;) f(i, thread);
  });
}

// dst[j * ld_dst + i] = src[i * ld_src + j] for i < M, j < N, converting S to D. 32-bit elements of one type
// (float, and int32 argmax moved as float bits: shuffles and loads/stores never change bits) go through ATen's
// vectorised block transposes, 16 x 16 (AVX-512) or 8 x 8 (AVX2), on the whole blocks; the remainders (the last
// row of a 49-bin tile, ...) are copied element by element, cheaper than a masked block transpose for them.
template <typename S, typename D>
inline void transpose(const S* src, int64_t ld_src, D* dst, int64_t ld_dst, int64_t M, int64_t N) {
  constexpr bool bits32 = std::is_same_v<S, D> && sizeof(S) == 4;
  int64_t m0 = 0, n0 = 0;  // the scalar loops below do [m0, M) x [0, N) and [0, m0) x [n0, N)
  if constexpr (bits32) {
    const float* s = reinterpret_cast<const float*>(src);
    float* d = reinterpret_cast<float*>(dst);
#if defined(CPU_CAPABILITY_AVX512)
    constexpr int64_t B = 16;
#elif defined(CPU_CAPABILITY_AVX2)
    constexpr int64_t B = 8;
#else
    constexpr int64_t B = 0;
#endif
    if constexpr (B > 0) {
      m0 = M / B * B;
      n0 = N / B * B;
      for (int64_t i = 0; i < m0; i += B) {
        for (int64_t j = 0; j < n0; j += B) {
          at::vec::transpose_mxn<float, B, B>(s + i * ld_src + j, ld_src, d + j * ld_dst + i, ld_dst);
        }
      }
    }
  }
  const auto block = [&](int64_t i0, int64_t i1, int64_t j0, int64_t j1) {
    for (int64_t ib = i0; ib < i1; ib += 16) {
      for (int64_t jb = j0; jb < j1; jb += 16) {
        for (int64_t i = ib; i < std::min(ib + 16, i1); ++i) {
          for (int64_t j = jb; j < std::min(jb + 16, j1); ++j) {
            dst[j * ld_dst + i] = static_cast<D>(src[i * ld_src + j]);
          }
        }
      }
    }
  };
  block(m0, M, 0, N);
  block(0, m0, n0, N);
}

}  // namespace roi_ops
