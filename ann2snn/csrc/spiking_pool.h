// Shared geometry and input checks of the ann2snn::cumulative_max_pool2d kernels (CPU in
// spiking_pool.cpp, CUDA in spiking_pool_cuda.cu); messages match ann2snn/ops.py.
#pragma once

#include <ATen/ATen.h>

#include <cmath>
#include <cstdint>

#ifdef __CUDACC__
#define ANN2SNN_HOST_DEVICE __host__ __device__
#else
#define ANN2SNN_HOST_DEVICE
#endif

namespace ann2snn {

struct PoolGeometry {
  int64_t kh, kw, sh, sw, ph, pw, dh, dw;
  int64_t H, W, Ho, Wo;
};

// The max of one pooling window of the plane S (H x W) whose top-left tap is (h0, w0),
// taps scanned in row order; NaN propagates, as in torch's max pooling. CPU and CUDA
// kernels share it, so their results are bit-identical.
ANN2SNN_HOST_DEVICE inline float window_max(const float* S, const PoolGeometry& g, int64_t h0,
                                            int64_t w0) {
  float m = -INFINITY;
  for (int64_t i = 0; i < g.kh; ++i) {
    const int64_t h = h0 + i * g.dh;
    if (h < 0 || h >= g.H) continue;
    for (int64_t j = 0; j < g.kw; ++j) {
      const int64_t w = w0 + j * g.dw;
      if (w < 0 || w >= g.W) continue;
      const float v = S[h * g.W + w];
      if (v > m || v != v) m = v;
    }
  }
  return m;
}

inline int64_t pooled_size(int64_t in, int64_t k, int64_t s, int64_t p, int64_t d, bool ceil_mode) {
  // Same formula as torch's pooling_output_shape.
  const int64_t span = in + 2 * p - d * (k - 1) - 1;
  if (span + (ceil_mode ? s - 1 : 0) < 0) {
    return 0;
  }
  int64_t out = (span + (ceil_mode ? s - 1 : 0)) / s + 1;
  if (ceil_mode && (out - 1) * s >= in + p) {
    --out;
  }
  return out;
}

inline void check_pool_tensors(const at::Tensor& x, const at::Tensor& total, const at::Tensor& last,
                  int64_t Ho, int64_t Wo) {
  TORCH_CHECK(x.dim() == 5,
              "ann2snn::cumulative_max_pool2d: x must be [T, N, C, H, W], got shape ", x.sizes());
  TORCH_CHECK(x.scalar_type() == at::kFloat && total.scalar_type() == at::kFloat &&
                  last.scalar_type() == at::kFloat,
              "ann2snn::cumulative_max_pool2d: x, total and last must be float32, got ",
              x.scalar_type(), ", ", total.scalar_type(), ", ", last.scalar_type());
  TORCH_CHECK(x.device() == total.device() && x.device() == last.device(),
              "ann2snn::cumulative_max_pool2d: x, total and last must be on the same device");
  TORCH_CHECK(total.sizes() == x.sizes().slice(1),
              "ann2snn::cumulative_max_pool2d: total must have shape x.shape[1:] = ",
              x.sizes().slice(1), ", got ", total.sizes());
  TORCH_CHECK(last.dim() == 4 && last.size(0) == x.size(1) && last.size(1) == x.size(2) &&
                  last.size(2) == Ho && last.size(3) == Wo,
              "ann2snn::cumulative_max_pool2d: last must have shape [", x.size(1), ", ",
              x.size(2), ", ", Ho, ", ", Wo, "] (the pooled shape), got ", last.sizes());
}

// Validates the pooling parameters and the tensors; returns the geometry.
inline PoolGeometry check_pool_inputs(const at::Tensor& x_in, const at::Tensor& total_in,
                                      const at::Tensor& last_in, at::IntArrayRef kernel_size,
                                      at::IntArrayRef stride, at::IntArrayRef padding,
                                      at::IntArrayRef dilation, bool ceil_mode) {
  TORCH_CHECK(kernel_size.size() == 2 && stride.size() == 2 && padding.size() == 2 &&
                  dilation.size() == 2,
              "ann2snn::cumulative_max_pool2d: kernel_size, stride, padding and dilation must "
              "have 2 elements each");
  TORCH_CHECK(x_in.dim() == 5,
              "ann2snn::cumulative_max_pool2d: x must be [T, N, C, H, W], got shape ",
              x_in.sizes());
  PoolGeometry g{kernel_size[0], kernel_size[1], stride[0], stride[1], padding[0], padding[1],
                 dilation[0],    dilation[1],    x_in.size(3), x_in.size(4), 0, 0};
  TORCH_CHECK(g.kh > 0 && g.kw > 0 && g.sh > 0 && g.sw > 0 && g.dh > 0 && g.dw > 0 &&
                  g.ph >= 0 && g.pw >= 0 && 2 * g.ph <= g.kh && 2 * g.pw <= g.kw,
              "ann2snn::cumulative_max_pool2d: invalid pooling parameters (kernel ", kernel_size,
              ", stride ", stride, ", padding ", padding, ", dilation ", dilation, ")");
  g.Ho = pooled_size(g.H, g.kh, g.sh, g.ph, g.dh, ceil_mode);
  g.Wo = pooled_size(g.W, g.kw, g.sw, g.pw, g.dw, ceil_mode);
  TORCH_CHECK(g.Ho > 0 && g.Wo > 0, "ann2snn::cumulative_max_pool2d: input ", g.H, "x", g.W,
              " is too small for the pooling window");
  check_pool_tensors(x_in, total_in, last_in, g.Ho, g.Wo);
  return g;
}

}  // namespace ann2snn
