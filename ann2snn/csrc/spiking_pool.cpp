// CPU kernel of ann2snn::cumulative_max_pool2d: max pooling of rate-coded spike trains.
//
// Per (sample, channel) plane, in float32 and in exactly this order (the pure-torch
// reference is in ann2snn/ops.py):
//   S = total;  P = last
//   for t in range(T):
//     S = S + x[t]                      (running input sum, per input unit)
//     M = max_pool2d(S)                 (per output unit)
//     out[t] = M - P;  P = M
//   total_out = S;  last_out = P
// The average of out over t telescopes to max_pool2d(S_T / T) - last / T: the max pooling
// of the average input, so the SNN's pooled rate converges to the ANN's max pooling.
//
// Each task owns whole planes (the plane's running sums, e.g. 28x28 floats, stay in L1)
// and runs all T steps over them: x is read once and out written once, which is the
// memory-bandwidth floor; the torch composition (cumsum, pool, subtract) makes 4 passes.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <tuple>
#include <vector>

#include "if_neuron.h"  // advise_huge_pages

namespace ann2snn {
namespace {

// Running sums per task block: 32K floats (128 KiB) stay in L2 across the T steps.
constexpr int64_t kBlockFloats = 32768;
// Outputs at least this large ask for transparent huge pages (first-touch page faults).
constexpr int64_t kHugePageOutputBytes = int64_t{4} << 20;

struct PoolGeometry {
  int64_t kh, kw, sh, sw, ph, pw, dh, dw;
  int64_t H, W, Ho, Wo;
};

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

// M[ho, wo] for one plane of running sums S (H x W): the general window.
void pool_plane_general(const float* S, const PoolGeometry& g, float* M) {
  for (int64_t ho = 0; ho < g.Ho; ++ho) {
    const int64_t h0 = ho * g.sh - g.ph;
    for (int64_t wo = 0; wo < g.Wo; ++wo) {
      const int64_t w0 = wo * g.sw - g.pw;
      float m = -std::numeric_limits<float>::infinity();
      for (int64_t i = 0; i < g.kh; ++i) {
        const int64_t h = h0 + i * g.dh;
        if (h < 0 || h >= g.H) continue;
        for (int64_t j = 0; j < g.kw; ++j) {
          const int64_t w = w0 + j * g.dw;
          if (w < 0 || w >= g.W) continue;
          const float v = S[h * g.W + w];
          // NaN propagates, as in torch's max pooling.
          if (v > m || v != v) m = v;
        }
      }
      M[ho * g.Wo + wo] = m;
    }
  }
}

// The common 2x2 window, stride 2, no padding, no dilation: branch-free and vectorizable.
void pool_plane_2x2(const float* S, const PoolGeometry& g, float* M) {
  for (int64_t ho = 0; ho < g.Ho; ++ho) {
    const float* r0 = S + (2 * ho) * g.W;
    const float* r1 = r0 + g.W;
    float* m = M + ho * g.Wo;
    for (int64_t wo = 0; wo < g.Wo; ++wo) {
      const float a = std::max(r0[2 * wo], r0[2 * wo + 1]);
      const float b = std::max(r1[2 * wo], r1[2 * wo + 1]);
      m[wo] = std::max(a, b);
    }
  }
}

void check_inputs(const at::Tensor& x, const at::Tensor& total, const at::Tensor& last,
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

std::tuple<at::Tensor, at::Tensor, at::Tensor> cumulative_max_pool2d_cpu(
    const at::Tensor& x_in, const at::Tensor& total_in, const at::Tensor& last_in,
    at::IntArrayRef kernel_size, at::IntArrayRef stride, at::IntArrayRef padding,
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
  check_inputs(x_in, total_in, last_in, g.Ho, g.Wo);

  const at::Tensor x = x_in.contiguous();
  const int64_t T = x.size(0);
  const int64_t planes = x.size(1) * x.size(2);
  const int64_t hw = g.H * g.W;
  const int64_t ohw = g.Ho * g.Wo;
  at::Tensor out = at::empty({T, x.size(1), x.size(2), g.Ho, g.Wo}, x.options());
  if (static_cast<int64_t>(out.nbytes()) >= kHugePageOutputBytes) {
    advise_huge_pages(out);
  }
  at::Tensor total = total_in.contiguous().clone();
  at::Tensor last = last_in.contiguous().clone();
  if (planes == 0 || hw == 0) {
    return {out, total, last};
  }
  const bool fast = g.kh == 2 && g.kw == 2 && g.sh == 2 && g.sw == 2 && g.ph == 0 &&
                    g.pw == 0 && g.dh == 1 && g.dw == 1 && !ceil_mode;
  const float* xp = x.data_ptr<float>();
  float* op = out.data_ptr<float>();
  float* sp = total.data_ptr<float>();  // running sums, updated in place
  float* lp = last.data_ptr<float>();   // previous pooled values, updated in place
  // Blocks of whole planes with about kBlockFloats running sums (kept in L2): each step
  // then reads one long contiguous run of x[t], which the prefetchers follow.
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  const int64_t per_thread = (planes + threads - 1) / threads;
  const int64_t block = std::clamp<int64_t>(kBlockFloats / hw, 1, per_thread);
  const int64_t num_blocks = (planes + block - 1) / block;
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 15) / std::max<int64_t>(1, block * hw * T));
  at::parallel_for(0, num_blocks, grain, [&](int64_t begin, int64_t end) {
    std::vector<float> pooled(ohw);
    for (int64_t b = begin; b < end; ++b) {
      const int64_t p0 = b * block;
      const int64_t p1 = std::min(planes, p0 + block);
      for (int64_t t = 0; t < T; ++t) {
        const float* xt = xp + (t * planes + p0) * hw;
        float* S = sp + p0 * hw;
        const int64_t n = (p1 - p0) * hw;
#pragma omp simd
        for (int64_t i = 0; i < n; ++i) {
          S[i] = S[i] + xt[i];
        }
        for (int64_t p = p0; p < p1; ++p) {
          if (fast) {
            pool_plane_2x2(sp + p * hw, g, pooled.data());
          } else {
            pool_plane_general(sp + p * hw, g, pooled.data());
          }
          float* P = lp + p * ohw;
          float* ot = op + (t * planes + p) * ohw;
#pragma omp simd
          for (int64_t i = 0; i < ohw; ++i) {
            ot[i] = pooled[i] - P[i];
            P[i] = pooled[i];
          }
        }
      }
    }
  });
  return {out, total, last};
}

}  // namespace
}  // namespace ann2snn

TORCH_LIBRARY_IMPL(ann2snn, CPU, m) {
  m.impl("cumulative_max_pool2d", &ann2snn::cumulative_max_pool2d_cpu);
}
