// CUDA kernel of ann2snn::if_multistep (integrate-and-fire, soft reset, multi-step).
//
// One thread owns 4 consecutive elements (one float4 / 8-byte half4 access per step when
// aligned) and runs the T loop with the membrane potentials in registers; consecutive
// threads touch consecutive memory, so every step is a fully coalesced read of x[t] and
// write of s[t]. Spikes are written with streaming stores: nothing reads them soon.
// The arithmetic uses explicit round-to-nearest intrinsics (and the file is built with
// -fmad=false) so no FMA changes a result: bit-identical to the reference.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <torch/library.h>

#include <cstdint>
#include <tuple>

#include "if_neuron.h"

namespace ann2snn {
namespace {

constexpr int kThreads = 256;
constexpr int kVec = 4;

// x goes through the read-only cache: with a constant input (time stride 0) every step
// re-reads the same block, so it must not be marked evict-first.
__device__ __forceinline__ float load_f(const float* p) { return __ldg(p); }
__device__ __forceinline__ float load_f(const at::Half* p) {
  return __half2float(__ldg(reinterpret_cast<const __half*>(p)));
}
__device__ __forceinline__ float load_f(const at::BFloat16* p) {
  return __bfloat162float(__ldg(reinterpret_cast<const __nv_bfloat16*>(p)));
}

__device__ __forceinline__ void store_f(float* p, float s) { __stcs(p, s); }
__device__ __forceinline__ void store_f(at::Half* p, float s) {
  __stcs(reinterpret_cast<__half*>(p), __float2half_rn(s));
}
__device__ __forceinline__ void store_f(at::BFloat16* p, float s) {
  __stcs(reinterpret_cast<__nv_bfloat16*>(p), __float2bfloat16_rn(s));
}

// One step for one element: v = v + x; s = v >= th; v = v - s * th.
__device__ __forceinline__ float if_step(float& v, float x, float th) {
  v = __fadd_rn(v, x);
  const float s = v >= th ? 1.0f : 0.0f;
  v = __fsub_rn(v, __fmul_rn(s, th));
  return s;
}

// Generic path: any element count/alignment, any dtype; kVec elements per thread, strided
// by the thread count so each step's accesses stay coalesced.
template <typename scalar_t>
__global__ void if_multistep_kernel(const scalar_t* __restrict__ x, int64_t time_stride,
                                    const float* __restrict__ v0,
                                    const float* __restrict__ threshold, int64_t channels,
                                    int64_t inner, scalar_t* __restrict__ spikes,
                                    float* __restrict__ v_out, int64_t T, int64_t n) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t base = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  int64_t idx[kVec];
  float v[kVec];
  float th[kVec];
#pragma unroll
  for (int k = 0; k < kVec; ++k) {
    idx[k] = base + k * stride;
    const bool ok = idx[k] < n;
    v[k] = ok ? v0[idx[k]] : 0.0f;
    th[k] = ok ? threshold[(idx[k] / inner) % channels] : 0.0f;
  }
  for (int64_t t = 0; t < T; ++t) {
    const scalar_t* xt = x + t * time_stride;
    scalar_t* st = spikes + t * n;
#pragma unroll
    for (int k = 0; k < kVec; ++k) {
      if (idx[k] < n) {
        store_f(st + idx[k], if_step(v[k], load_f(xt + idx[k]), th[k]));
      }
    }
  }
#pragma unroll
  for (int k = 0; k < kVec; ++k) {
    if (idx[k] < n) {
      v_out[idx[k]] = v[k];
    }
  }
}

// Fast path: float32, all pointers 16-byte aligned, n and time_stride multiples of 4.
__global__ void if_multistep_kernel_f4(const float4* __restrict__ x, int64_t time_stride4,
                                       const float4* __restrict__ v0,
                                       const float* __restrict__ threshold, int64_t channels,
                                       int64_t inner, float4* __restrict__ spikes,
                                       float4* __restrict__ v_out, int64_t T, int64_t n4) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n4) {
    return;
  }
  float4 v = v0[i];
  const int64_t e = 4 * i;
  const float th0 = threshold[((e + 0) / inner) % channels];
  const float th1 = threshold[((e + 1) / inner) % channels];
  const float th2 = threshold[((e + 2) / inner) % channels];
  const float th3 = threshold[((e + 3) / inner) % channels];
  for (int64_t t = 0; t < T; ++t) {
    const float4 xv = __ldg(x + t * time_stride4 + i);
    float4 s;
    s.x = if_step(v.x, xv.x, th0);
    s.y = if_step(v.y, xv.y, th1);
    s.z = if_step(v.z, xv.z, th2);
    s.w = if_step(v.w, xv.w, th3);
    __stcs(spikes + t * n4 + i, s);
  }
  v_out[i] = v;
}

inline bool aligned16(const void* p) { return reinterpret_cast<std::uintptr_t>(p) % 16 == 0; }

std::tuple<at::Tensor, at::Tensor> if_multistep_cuda(const at::Tensor& x, const at::Tensor& v,
                                                     const at::Tensor& threshold) {
  check_if_inputs(x, v, threshold);
  TORCH_CHECK(x.is_cuda(), "ann2snn::if_multistep (CUDA kernel): x must be a CUDA tensor");
  const c10::cuda::CUDAGuard device_guard(x.device());
  const int64_t T = x.size(0);
  const int64_t n = v.numel();
  at::Tensor spikes =
      at::empty(x.sizes(), x.options().memory_format(at::MemoryFormat::Contiguous));
  const at::Tensor v_in = v.contiguous();
  if (T == 0 || n == 0) {
    return {spikes, v_in.clone(at::MemoryFormat::Contiguous)};
  }
  at::Tensor v_out = at::empty_like(v_in, at::MemoryFormat::Contiguous);
  const StepMajorInput in = step_major_input(x);
  const at::Tensor th = threshold.contiguous();
  const int64_t channels = th.numel();
  const int64_t inner = channel_inner_size(x, threshold);
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();

  if (x.scalar_type() == at::kFloat && n % kVec == 0 && in.time_stride % kVec == 0 &&
      aligned16(in.tensor.const_data_ptr()) && aligned16(spikes.const_data_ptr()) &&
      aligned16(v_in.const_data_ptr()) && aligned16(v_out.const_data_ptr())) {
    const int64_t n4 = n / kVec;
    const int64_t blocks = (n4 + kThreads - 1) / kThreads;
    TORCH_CHECK(blocks <= 0x7fffffff, "ann2snn::if_multistep: input too large for one launch");
    if_multistep_kernel_f4<<<static_cast<unsigned int>(blocks), kThreads, 0, stream>>>(
        reinterpret_cast<const float4*>(in.tensor.const_data_ptr<float>()),
        in.time_stride / kVec, reinterpret_cast<const float4*>(v_in.const_data_ptr<float>()),
        th.const_data_ptr<float>(), channels, inner,
        reinterpret_cast<float4*>(spikes.mutable_data_ptr<float>()),
        reinterpret_cast<float4*>(v_out.mutable_data_ptr<float>()), T, n4);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return {spikes, v_out};
  }

  const int64_t threads_needed = (n + kVec - 1) / kVec;
  const int64_t blocks = (threads_needed + kThreads - 1) / kThreads;
  TORCH_CHECK(blocks <= 0x7fffffff, "ann2snn::if_multistep: input too large for one launch");
  const auto launch = [&](auto tag) {
    using scalar_t = decltype(tag);
    if_multistep_kernel<scalar_t><<<static_cast<unsigned int>(blocks), kThreads, 0, stream>>>(
        in.tensor.const_data_ptr<scalar_t>(), in.time_stride, v_in.const_data_ptr<float>(),
        th.const_data_ptr<float>(), channels, inner, spikes.mutable_data_ptr<scalar_t>(),
        v_out.mutable_data_ptr<float>(), T, n);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  };
  switch (x.scalar_type()) {
    case at::kFloat:
      launch(float{});
      break;
    case at::kHalf:
      launch(at::Half{});
      break;
    case at::kBFloat16:
      launch(at::BFloat16{});
      break;
    default:
      TORCH_CHECK(false, "ann2snn::if_multistep: unsupported dtype ", x.scalar_type());
  }
  return {spikes, v_out};
}

}  // namespace
}  // namespace ann2snn

TORCH_LIBRARY_IMPL(ann2snn, CUDA, m) { m.impl("if_multistep", &ann2snn::if_multistep_cuda); }
