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
#include "spiking_pool.h"

namespace ann2snn {
namespace {

// Running sums per task block: 32K floats (128 KiB) stay in L2 across the T steps.
constexpr int64_t kBlockFloats = 32768;
// Outputs at least this large ask for transparent huge pages (first-touch page faults).
constexpr int64_t kHugePageOutputBytes = int64_t{4} << 20;

// M[ho, wo] for one plane of running sums S (H x W): the general window.
void pool_plane_general(const float* S, const PoolGeometry& g, float* M) {
  for (int64_t ho = 0; ho < g.Ho; ++ho) {
    const int64_t h0 = ho * g.sh - g.ph;
    for (int64_t wo = 0; wo < g.Wo; ++wo) {
      const int64_t w0 = wo * g.sw - g.pw;
      const float m = window_max(S, g, h0, w0);
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

std::tuple<at::Tensor, at::Tensor, at::Tensor> cumulative_max_pool2d_cpu(
    const at::Tensor& x_in, const at::Tensor& total_in, const at::Tensor& last_in,
    at::IntArrayRef kernel_size, at::IntArrayRef stride, at::IntArrayRef padding,
    at::IntArrayRef dilation, bool ceil_mode) {
  const PoolGeometry g = check_pool_inputs(x_in, total_in, last_in, kernel_size, stride, padding,
                                           dilation, ceil_mode);

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
