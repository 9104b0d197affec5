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
#include <cstdlib>
#include <tuple>
#include <type_traits>
#include <vector>

#if defined(__SSE2__)
#include <emmintrin.h>
#define ANN2SNN_HAVE_SSE2 1
#endif
// AVX2 is used where the CPU has it, chosen at run time: the library is built for the
// baseline ISA so that a build cache can be shared between machines.
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define ANN2SNN_HAVE_AVX2_DISPATCH 1
#endif
#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "if_neuron.h"

namespace ann2snn {
namespace {

// Elements per block: 64 KiB of membrane potential (+ as much for per-element
// thresholds) per task.
constexpr int64_t kBlock = 16384;
// Per-channel thresholds are broadcast per run of a channel's elements when runs are at
// least this long, else read from a per-element buffer.
constexpr int64_t kMinChannelRun = 32;
// Spikes outputs at least this large (about an L3's share) are written with
// non-temporal stores: they will have left the caches before anyone reads them.
constexpr int64_t kStreamOutputBytes = int64_t{16} << 20;
// Outputs at least this large ask for transparent huge pages (see advise_huge_pages).
constexpr int64_t kHugePageOutputBytes = int64_t{4} << 20;

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

#if ANN2SNN_HAVE_AVX2_DISPATCH
__attribute__((target("avx2"))) inline __m256 load_threshold8(const ScalarThreshold th,
                                                               int64_t) {
  return _mm256_set1_ps(th.value);
}
__attribute__((target("avx2"))) inline __m256 load_threshold8(const BlockThreshold th,
                                                               int64_t i) {
  return _mm256_loadu_ps(th.values + i);
}

// The float32 step, 8 lanes at a time; spikes optionally with streaming stores.
template <typename Threshold>
__attribute__((target("avx2"))) void if_step_row_avx2(const float* __restrict__ x,
                                                       float* __restrict__ v,
                                                       const Threshold th,
                                                       float* __restrict__ s, int64_t n,
                                                       bool stream) {
  int64_t i = 0;
  if (stream) {
    i = std::min<int64_t>(
        n, ((32 - reinterpret_cast<std::uintptr_t>(s) % 32) % 32) / sizeof(float));
    if_step_row<float>(x, v, th, s, i);
  }
  const __m256 one = _mm256_set1_ps(1.0f);
  for (; i + 8 <= n; i += 8) {
    const __m256 thv = load_threshold8(th, i);
    const __m256 vi = _mm256_add_ps(_mm256_loadu_ps(v + i), _mm256_loadu_ps(x + i));
    const __m256 si = _mm256_and_ps(_mm256_cmp_ps(vi, thv, _CMP_GE_OQ), one);
    _mm256_storeu_ps(v + i, _mm256_sub_ps(vi, _mm256_mul_ps(si, thv)));
    if (stream) {
      _mm256_stream_ps(s + i, si);
    } else {
      _mm256_storeu_ps(s + i, si);
    }
  }
  if (i < n) {
    if_step_row<float>(x + i, v + i, th.shifted(i), s + i, n - i);
  }
}

// ANN2SNN_DISABLE_AVX2=1 forces the SSE2/generic paths (for tests on AVX2 machines).
bool cpu_has_avx2() {
  static const bool has = [] {
    const char* disable = std::getenv("ANN2SNN_DISABLE_AVX2");
    return __builtin_cpu_supports("avx2") && !(disable && disable[0] == '1');
  }();
  return has;
}
#endif

// One step over a row of n elements, with the widest vector code the CPU runs and
// streaming stores where asked.
template <typename scalar_t, typename Threshold>
inline void if_row(const scalar_t* x, float* v, const Threshold th, scalar_t* s, int64_t n,
                   bool stream) {
  if constexpr (std::is_same_v<scalar_t, float>) {
#if ANN2SNN_HAVE_AVX2_DISPATCH
    if (cpu_has_avx2()) {
      if_step_row_avx2(x, v, th, s, n, stream);
      return;
    }
#endif
#if ANN2SNN_HAVE_SSE2
    if (stream) {
      if_step_row_stream(x, v, th, s, n);
      return;
    }
#endif
  }
  (void)stream;
  if_step_row<scalar_t>(x, v, th, s, n);
}

// The T steps over one block of n elements starting at flat element e0 of S. Rows stay
// whole and contiguous in every case; only the threshold access differs.
template <typename scalar_t>
void if_block(const scalar_t* x, int64_t time_stride, int64_t T, int64_t step_numel,
              float* v, const float* threshold, int64_t channels, int64_t inner, int64_t e0,
              int64_t n, scalar_t* s, float* th_buffer, bool stream) {
  const auto row = [&](int64_t t, int64_t offset, int64_t length, auto th) {
    if_row(x + t * time_stride + offset, v + offset, th, s + t * step_numel + offset, length,
           stream);
  };
  if (channels == 1) {
    for (int64_t t = 0; t < T; ++t) {
      row(t, 0, n, ScalarThreshold{threshold[0]});
    }
  } else if (inner >= kMinChannelRun) {
    // Per-channel threshold, channels in long runs (conv feature maps): one broadcast
    // threshold per run instead of a per-element threshold load.
    for (int64_t t = 0; t < T; ++t) {
      for (int64_t i = 0; i < n;) {
        const int64_t plane = (e0 + i) / inner;
        const int64_t length = std::min(n, (plane + 1) * inner - e0) - i;
        row(t, i, length, ScalarThreshold{threshold[plane % channels]});
        i += length;
      }
    }
  } else {
    // Per-channel threshold, short runs (e.g. [B, F] with a threshold per feature).
    for (int64_t i = 0; i < n; ++i) {
      th_buffer[i] = threshold[((e0 + i) / inner) % channels];
    }
    for (int64_t t = 0; t < T; ++t) {
      row(t, 0, n, BlockThreshold{th_buffer});
    }
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
  const bool needs_th_buffer = channels > 1 && inner < kMinChannelRun;
  at::parallel_for(0, num_blocks, grain, [&](int64_t begin, int64_t end) {
    std::vector<float> th_buffer(needs_th_buffer ? block : 0);
    for (int64_t b = begin; b < end; ++b) {
      const int64_t e0 = b * block;
      const int64_t n = std::min(block, step_numel - e0);
      // v_out doubles as the block's working membrane potential.
      float* v = v_out + e0;
      std::copy(v_in + e0, v_in + e0 + n, v);
      if_block(x + e0, time_stride, T, step_numel, v, threshold, channels, inner, e0, n,
               spikes + e0, th_buffer.data(), stream);
    }
#if ANN2SNN_HAVE_SSE2
    if (stream) {
      _mm_sfence();  // make this thread's streaming stores visible before returning
    }
#endif
  });
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
  for (const at::Tensor* out : {&spikes, &v_out}) {
    if (static_cast<int64_t>(out->nbytes()) >= kHugePageOutputBytes) {
      advise_huge_pages(*out);
    }
  }
  const bool stream = static_cast<int64_t>(spikes.nbytes()) >= kStreamOutputBytes;
  const StepMajorInput in = step_major_input(x);
  const at::Tensor th = threshold.contiguous();
  const int64_t channels = th.numel();
  const int64_t inner = channel_inner_size(x, threshold);
  const auto run = [&](auto tag) {
    using scalar_t = decltype(tag);
    if_multistep_cpu_impl<scalar_t>(in.tensor.const_data_ptr<scalar_t>(), in.time_stride,
                                    v_in.const_data_ptr<float>(), th.const_data_ptr<float>(),
                                    channels, inner, spikes.mutable_data_ptr<scalar_t>(),
                                    v_out.mutable_data_ptr<float>(), T, step_numel, stream);
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
