// CUDA kernel of ann2snn::cumulative_max_pool2d (see spiking_pool.cpp for the semantics).
//
// One block owns one (sample, channel) plane and runs all T steps over it: the plane's
// running sums S live in shared memory, the previous pooled values P in registers, so x
// is read once and out written once. Planes too large for shared memory run the
// reference composition with ATen ops (bit-identical by construction). The sums use
// __fadd_rn / __fsub_rn (and the file is built with -fmad=false): bit-identical to the
// reference; the max scans each window in row-major order and propagates NaN, as torch.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <tuple>

#include "spiking_pool.h"

namespace ann2snn {
namespace {

constexpr int kMaxThreads = 256;
constexpr int kOutPerThread = 4;
constexpr int64_t kMaxSharedFloats = 12288;  // 48 KiB: the default dynamic shared limit

__global__ void cumulative_max_pool2d_kernel(const float* __restrict__ x,
                                             const float* __restrict__ total_in,
                                             const float* __restrict__ last_in,
                                             float* __restrict__ out,
                                             float* __restrict__ total_out,
                                             float* __restrict__ last_out, PoolGeometry g,
                                             int64_t T, int64_t planes) {
  extern __shared__ float S[];
  const int64_t hw = g.H * g.W;
  const int64_t ohw = g.Ho * g.Wo;
  for (int64_t p = blockIdx.x; p < planes; p += gridDim.x) {
    for (int64_t i = threadIdx.x; i < hw; i += blockDim.x) {
      S[i] = total_in[p * hw + i];
    }
    float P[kOutPerThread];
#pragma unroll
    for (int k = 0; k < kOutPerThread; ++k) {
      const int64_t o = threadIdx.x + static_cast<int64_t>(k) * blockDim.x;
      P[k] = o < ohw ? last_in[p * ohw + o] : 0.0f;
    }
    for (int64_t t = 0; t < T; ++t) {
      __syncthreads();  // previous step's pooling done reading S
      const float* xt = x + (t * planes + p) * hw;
      for (int64_t i = threadIdx.x; i < hw; i += blockDim.x) {
        S[i] = __fadd_rn(S[i], __ldg(xt + i));
      }
      __syncthreads();
      float* ot = out + (t * planes + p) * ohw;
#pragma unroll
      for (int k = 0; k < kOutPerThread; ++k) {
        const int64_t o = threadIdx.x + static_cast<int64_t>(k) * blockDim.x;
        if (o >= ohw) continue;
        const int64_t h0 = (o / g.Wo) * g.sh - g.ph;
        const int64_t w0 = (o % g.Wo) * g.sw - g.pw;
        const float m = window_max(S, g, h0, w0);
        __stcs(ot + o, __fsub_rn(m, P[k]));
        P[k] = m;
      }
    }
    __syncthreads();
    for (int64_t i = threadIdx.x; i < hw; i += blockDim.x) {
      total_out[p * hw + i] = S[i];
    }
#pragma unroll
    for (int k = 0; k < kOutPerThread; ++k) {
      const int64_t o = threadIdx.x + static_cast<int64_t>(k) * blockDim.x;
      if (o < ohw) last_out[p * ohw + o] = P[k];
    }
    __syncthreads();  // S is reused by the next plane
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> cumulative_max_pool2d_cuda(
    const at::Tensor& x_in, const at::Tensor& total_in, const at::Tensor& last_in,
    at::IntArrayRef kernel_size, at::IntArrayRef stride, at::IntArrayRef padding,
    at::IntArrayRef dilation, bool ceil_mode) {
  const PoolGeometry g =
      check_pool_inputs(x_in, total_in, last_in, kernel_size, stride, padding, dilation,
                        ceil_mode);
  TORCH_CHECK(x_in.is_cuda(),
              "ann2snn::cumulative_max_pool2d (CUDA kernel): x must be a CUDA tensor");
  const c10::cuda::CUDAGuard device_guard(x_in.device());
  const at::Tensor x = x_in.contiguous();
  const int64_t T = x.size(0);
  const int64_t planes = x.size(1) * x.size(2);
  const int64_t hw = g.H * g.W;
  const int64_t ohw = g.Ho * g.Wo;
  if (hw > kMaxSharedFloats || ohw > int64_t{kMaxThreads} * kOutPerThread) {
    // The reference composition, on the GPU with ATen's kernels.
    at::Tensor out = at::empty({T, x.size(1), x.size(2), g.Ho, g.Wo}, x.options());
    at::Tensor running = total_in.contiguous().clone();
    at::Tensor previous = last_in.contiguous().clone();
    for (int64_t t = 0; t < T; ++t) {
      running.add_(x.select(0, t));
      at::Tensor pooled =
          at::max_pool2d(running, kernel_size, stride, padding, dilation, ceil_mode);
      at::Tensor slot = out.select(0, t);
      at::sub_out(slot, pooled, previous);
      previous = pooled;
    }
    return {out, running, previous.contiguous()};
  }
  at::Tensor out = at::empty({T, x.size(1), x.size(2), g.Ho, g.Wo}, x.options());
  const at::Tensor total = total_in.contiguous();
  const at::Tensor last = last_in.contiguous();
  at::Tensor total_out = at::empty_like(total, at::MemoryFormat::Contiguous);
  at::Tensor last_out = at::empty_like(last, at::MemoryFormat::Contiguous);
  if (planes == 0 || hw == 0) {
    total_out.copy_(total);
    last_out.copy_(last);
    return {out, total_out, last_out};
  }
  const int64_t wanted = std::max<int64_t>((ohw + kOutPerThread - 1) / kOutPerThread, 32);
  const int threads = static_cast<int>(std::min<int64_t>(kMaxThreads, (wanted + 31) / 32 * 32));
  const int64_t blocks = std::min<int64_t>(planes, 0x7fffffff);
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  cumulative_max_pool2d_kernel<<<static_cast<unsigned int>(blocks), threads,
                                 static_cast<size_t>(hw) * sizeof(float), stream>>>(
      x.const_data_ptr<float>(), total.const_data_ptr<float>(), last.const_data_ptr<float>(),
      out.mutable_data_ptr<float>(), total_out.mutable_data_ptr<float>(),
      last_out.mutable_data_ptr<float>(), g, T, planes);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {out, total_out, last_out};
}

}  // namespace
}  // namespace ann2snn

TORCH_LIBRARY_IMPL(ann2snn, CUDA, m) {
  m.impl("cumulative_max_pool2d", &ann2snn::cumulative_max_pool2d_cuda);
}
