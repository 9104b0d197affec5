// CPU kernel of ann2snn::if_multistep (integrate-and-fire, soft reset, multi-step).
//
// Memory-bound: every step reads x[t] and writes s[t] once. Each task owns a block of
// up to kBlock elements and runs all T steps over it, with the block's membrane
// potentials (and per-channel thresholds) kept hot in L2. Long rows matter: with short
// rows (e.g. 1024 floats = one 4 KiB page) every row of every step starts a new page and
// the hardware prefetchers restart, which measured 2x slower than 16-64K-element rows.
// The inner loop is branch-free so it vectorizes; large float32 outputs are written with
// non-temporal stores (no read-for-ownership of lines nobody will read soon).
// Built with -ffp-contract=off (no FMA): the arithmetic must match the reference bit for
// bit; -fno-trapping-math only lets the compiler if-convert the select.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <tuple>
#include <type_traits>
#include <vector>

#if defined(__SSE2__)
#include <emmintrin.h>
#define ANN2SNN_HAVE_SSE2 1
#endif
#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "if_neuron.h"

namespace ann2snn {
namespace {

// Elements per block: 128 KiB of membrane potential (+ as much for per-channel
// thresholds) per task.
constexpr int64_t kBlock = 32768;
// Outputs at least this large are written with non-temporal stores and backed by
// transparent huge pages.
constexpr int64_t kLargeOutputBytes = int64_t{16} << 20;

inline float to_float(float x) { return x; }
inline float to_float(at::Half x) { return static_cast<float>(x); }
inline float to_float(at::BFloat16 x) { return static_cast<float>(x); }

template <typename scalar_t>
inline scalar_t from_float(float x) {
  return static_cast<scalar_t>(x);
}

// Threshold access: one value for every element, or one per element of the block.
struct ScalarThreshold {
  float value;
  float operator[](int64_t) const { return value; }
  ScalarThreshold shifted(int64_t) const { return *this; }
};
struct BlockThreshold {
  const float* __restrict__ values;
  float operator[](int64_t i) const { return values[i]; }
  BlockThreshold shifted(int64_t i) const { return {values + i}; }
};

// One step over n elements: v += x; s = v >= th; v -= s * th.
template <typename scalar_t, typename Threshold>
inline void if_step_row(const scalar_t* __restrict__ x, float* __restrict__ v,
                        const Threshold th, scalar_t* __restrict__ s, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const float vi = v[i] + to_float(x[i]);
    const float si = vi >= th[i] ? 1.0f : 0.0f;
    v[i] = vi - si * th[i];
    s[i] = from_float<scalar_t>(si);
  }
}

#if ANN2SNN_HAVE_SSE2
inline __m128 load_threshold4(const ScalarThreshold th, int64_t) { return _mm_set1_ps(th.value); }
inline __m128 load_threshold4(const BlockThreshold th, int64_t i) {
  return _mm_loadu_ps(th.values + i);
}

// Same step, float32 only, spikes written with non-temporal (streaming) stores.
template <typename Threshold>
inline void if_step_row_stream(const float* __restrict__ x, float* __restrict__ v,
                               const Threshold th, float* __restrict__ s, int64_t n) {
  int64_t i = 0;
  const int64_t head = std::min<int64_t>(
      n, ((16 - reinterpret_cast<std::uintptr_t>(s) % 16) % 16) / sizeof(float));
  if_step_row<float>(x, v, th, s, head);
  i = head;
  const __m128 one = _mm_set1_ps(1.0f);
  for (; i + 4 <= n; i += 4) {
    const __m128 thv = load_threshold4(th, i);
    const __m128 vi = _mm_add_ps(_mm_loadu_ps(v + i), _mm_loadu_ps(x + i));
    const __m128 si = _mm_and_ps(_mm_cmpge_ps(vi, thv), one);
    _mm_storeu_ps(v + i, _mm_sub_ps(vi, _mm_mul_ps(si, thv)));
    _mm_stream_ps(s + i, si);
  }
  if (i < n) {
    if_step_row<float>(x + i, v + i, th.shifted(i), s + i, n - i);
  }
}
#endif

template <typename scalar_t, typename Threshold>
inline void if_block(const scalar_t* x, int64_t time_stride, int64_t T, int64_t step_numel,
                     float* v, const Threshold th, scalar_t* s, int64_t n, bool stream) {
#if ANN2SNN_HAVE_SSE2
  if constexpr (std::is_same_v<scalar_t, float>) {
    if (stream) {
      for (int64_t t = 0; t < T; ++t) {
        if_step_row_stream(x + t * time_stride, v, th, s + t * step_numel, n);
      }
      return;
    }
  }
#endif
  (void)stream;
  for (int64_t t = 0; t < T; ++t) {
    if_step_row<scalar_t>(x + t * time_stride, v, th, s + t * step_numel, n);
  }
}

template <typename scalar_t>
void if_multistep_cpu_impl(const scalar_t* x, int64_t time_stride, const float* v_in,
                           const float* threshold, int64_t channels, int64_t inner,
                           scalar_t* spikes, float* v_out, int64_t T, int64_t step_numel,
                           bool stream) {
  // Blocks of at most kBlock elements, small enough that every thread gets work, and
  // a multiple of 16 elements (64 bytes) so that blocks start on cache lines.
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  const int64_t per_thread = (step_numel + threads - 1) / threads;
  const int64_t block = std::clamp<int64_t>((per_thread + 15) / 16 * 16, 16, kBlock);
  const int64_t num_blocks = (step_numel + block - 1) / block;
  // Tiny inputs (< ~64K element-steps in all) stay on the calling thread.
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 16) / (block * T));
  const bool per_channel = channels > 1;
  at::parallel_for(0, num_blocks, grain, [&](int64_t begin, int64_t end) {
    std::vector<float> th(per_channel ? block : 0);
    for (int64_t b = begin; b < end; ++b) {
      const int64_t e0 = b * block;
      const int64_t n = std::min(block, step_numel - e0);
      // v_out doubles as the block's working membrane potential.
      float* v = v_out + e0;
      std::copy(v_in + e0, v_in + e0 + n, v);
      if (per_channel) {
        for (int64_t i = 0; i < n; ++i) {
          th[i] = threshold[((e0 + i) / inner) % channels];
        }
        if_block(x + e0, time_stride, T, step_numel, v, BlockThreshold{th.data()},
                 spikes + e0, n, stream);
      } else {
        if_block(x + e0, time_stride, T, step_numel, v, ScalarThreshold{threshold[0]},
                 spikes + e0, n, stream);
      }
    }
#if ANN2SNN_HAVE_SSE2
    if (stream) {
      _mm_sfence();  // make this thread's streaming stores visible before returning
    }
#endif
  });
}

// Ask for transparent huge pages for a large, not yet touched output: with 4 KiB pages
// the first-touch page faults of a fresh 200 MB output cost several times the kernel.
void advise_huge_pages(const at::Tensor& t) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr std::uintptr_t kHuge = std::uintptr_t{2} << 20;
  const auto begin = reinterpret_cast<std::uintptr_t>(t.data_ptr());
  const std::uintptr_t first = (begin + kHuge - 1) & ~(kHuge - 1);
  const std::uintptr_t last = (begin + t.nbytes()) & ~(kHuge - 1);
  if (last > first) {
    // Only a hint: failure (THP disabled) changes nothing.
    (void)madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE);
  }
#else
  (void)t;
#endif
}

std::tuple<at::Tensor, at::Tensor> if_multistep_cpu(const at::Tensor& x, const at::Tensor& v,
                                                    const at::Tensor& threshold) {
  check_if_inputs(x, v, threshold);
  TORCH_CHECK(x.device().is_cpu(), "ann2snn::if_multistep (CPU kernel): x must be on the CPU");
  const int64_t T = x.size(0);
  const int64_t step_numel = v.numel();
  at::Tensor spikes =
      at::empty(x.sizes(), x.options().memory_format(at::MemoryFormat::Contiguous));
  const at::Tensor v_in = v.contiguous();
  if (T == 0 || step_numel == 0) {
    return {spikes, v_in.clone(at::MemoryFormat::Contiguous)};
  }
  at::Tensor v_out = at::empty_like(v_in, at::MemoryFormat::Contiguous);
  const bool large = spikes.nbytes() >= kLargeOutputBytes;
  if (large) {
    advise_huge_pages(spikes);
  }
  if (v_out.nbytes() >= kLargeOutputBytes) {
    advise_huge_pages(v_out);
  }
  const StepMajorInput in = step_major_input(x);
  const at::Tensor th = threshold.contiguous();
  const int64_t channels = th.numel();
  const int64_t inner = channel_inner_size(x, threshold);
  const auto run = [&](auto tag) {
    using scalar_t = decltype(tag);
    if_multistep_cpu_impl<scalar_t>(in.tensor.const_data_ptr<scalar_t>(), in.time_stride,
                                    v_in.const_data_ptr<float>(), th.const_data_ptr<float>(),
                                    channels, inner, spikes.mutable_data_ptr<scalar_t>(),
                                    v_out.mutable_data_ptr<float>(), T, step_numel, large);
  };
  switch (x.scalar_type()) {
    case at::kFloat:
      run(float{});
      break;
    case at::kHalf:
      run(at::Half{});
      break;
    case at::kBFloat16:
      run(at::BFloat16{});
      break;
    default:
      TORCH_CHECK(false, "ann2snn::if_multistep: unsupported dtype ", x.scalar_type());
  }
  return {spikes, v_out};
}

}  // namespace
}  // namespace ann2snn

TORCH_LIBRARY_IMPL(ann2snn, CPU, m) { m.impl("if_multistep", &ann2snn::if_multistep_cpu); }
