// CPU kernel of ann2snn::if_sweep_errors: the squared rate error of an IF layer under K
// candidate parameter sets, without writing a spike train.
//
// Layer calibration (converter_passes/layer_calibration) scores K candidates per channel
// (initial potentials, or threshold factors) by simulating the layer on recorded input
// currents z [T, B, C, *S] and comparing rates with the ANN's activations a [B, C, *S].
// Per element and candidate k, in float32 and in exactly this order (the pure-torch
// reference is if_sweep_errors_reference in ann2snn/ops/__init__.py):
//   v = v0[k, c];  n = 0
//   for t in range(horizons[-1]):
//     v = v + z[t];  s = (v >= theta[k, c]) ? 1 : 0;  v = v - s * theta[k, c];  n = n + s
//     if t + 1 == h (one of the horizons):  e = n * (gain[k, c] / h) - a;  E[k, c, h] += e * e
// (the IF op's update, see if_neuron.h). The result is sum_h (h / horizons[0]) * E[k, c, h]
// in float64, E summed over the batch and spatial positions in float64.
//
// The torch composition runs if_multistep once per candidate and reduces its spike train:
// K passes over z and K spike trains written and read. Here each task owns whole channels
// and, per (sample, channel) plane, runs every candidate while the plane's T x S inputs
// stay in cache: z is read from memory once. Sums run in a fixed order (channel by channel,
// sample by sample), so the result does not depend on the thread count. The inner loop is
// also compiled for AVX2 where GCC can pick the variant at load time (same results).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstdint>
#include <vector>

namespace ann2snn {
namespace {

constexpr const char* kOp = "ann2snn::if_sweep_errors";
constexpr int64_t kLanes = 8;

void check_inputs(const at::Tensor& z, const at::Tensor& a, const at::Tensor& threshold,
                  const at::Tensor& v0, const at::Tensor& gain, at::IntArrayRef horizons) {
  // Same checks and wording as _check_sweep_inputs in ann2snn/ops/__init__.py.
  TORCH_CHECK(z.dim() >= 2, kOp, ": z must be [T, B, ...], got shape ", z.sizes());
  TORCH_CHECK(z.scalar_type() == at::kFloat && a.scalar_type() == at::kFloat &&
                  threshold.scalar_type() == at::kFloat && v0.scalar_type() == at::kFloat &&
                  gain.scalar_type() == at::kFloat,
              kOp, ": every tensor must be float32");
  TORCH_CHECK(a.sizes() == z.sizes().slice(1), kOp, ": target must have shape z.shape[1:] = ",
              z.sizes().slice(1), ", got ", a.sizes());
  const int64_t channels = z.dim() > 2 ? z.size(2) : 1;
  TORCH_CHECK(threshold.dim() == 2 && threshold.size(1) == channels, kOp,
              ": threshold must be [K, C] with C = ", channels, ", got ", threshold.sizes());
  TORCH_CHECK(v0.sizes() == threshold.sizes() && gain.sizes() == threshold.sizes(), kOp,
              ": v0 and gain must have the shape of threshold ", threshold.sizes(), ", got ",
              v0.sizes(), " and ", gain.sizes());
  TORCH_CHECK(!horizons.empty(), kOp, ": horizons must not be empty");
  int64_t previous = 0;
  for (const int64_t h : horizons) {
    TORCH_CHECK(h > previous && h <= z.size(0), kOp,
                ": horizons must increase strictly within 1..T = ", z.size(0), ", got ",
                horizons);
    previous = h;
  }
}

// One candidate on one (sample, channel) plane: adds its squared errors after each horizon
// to out[0..H). Compiled for AVX2 as well where the compiler can dispatch at load time (the
// same float operations on wider registers: results are identical).
#if defined(__GNUC__) && defined(__x86_64__) && defined(__linux__) && !defined(__clang__)
__attribute__((target_clones("avx2", "default")))
#endif
void sweep_plane(const float* zb, int64_t step, const float* ab, int64_t plane,
                 const int64_t* hs, int64_t H, float theta, float start, float g, float* v,
                 float* n, double* out) {
  for (int64_t s = 0; s < plane; ++s) {
    v[s] = start;
    n[s] = 0.0f;
  }
  int64_t next = 0;
  for (int64_t t = 0; next < H; ++t) {
    const float* zt = zb + t * step;
    for (int64_t s = 0; s < plane; ++s) {
      const float u = v[s] + zt[s];
      const float spike = u >= theta ? 1.0f : 0.0f;
      v[s] = u - spike * theta;
      n[s] = n[s] + spike;
    }
    if (t + 1 == hs[next]) {
      const float per_spike = g / static_cast<float>(hs[next]);
      // kLanes independent partial sums, so that the compiler can vectorize the sum (one
      // running total is a dependency chain it must keep in order)
      double lanes[kLanes] = {};
      int64_t s = 0;
      for (; s + kLanes <= plane; s += kLanes) {
        for (int64_t j = 0; j < kLanes; ++j) {
          const float e = n[s + j] * per_spike - ab[s + j];
          lanes[j] += static_cast<double>(e * e);
        }
      }
      double total = 0.0;
      for (; s < plane; ++s) {
        const float e = n[s] * per_spike - ab[s];
        total += static_cast<double>(e * e);
      }
      for (int64_t j = 0; j < kLanes; ++j) total += lanes[j];
      out[next] += total;
      ++next;
    }
  }
}

at::Tensor if_sweep_errors_cpu(const at::Tensor& z_in, const at::Tensor& a_in,
                               const at::Tensor& threshold_in, const at::Tensor& v0_in,
                               const at::Tensor& gain_in, at::IntArrayRef horizons) {
  check_inputs(z_in, a_in, threshold_in, v0_in, gain_in, horizons);
  const at::Tensor z = z_in.contiguous();
  const at::Tensor a = a_in.contiguous();
  const at::Tensor threshold = threshold_in.contiguous();
  const at::Tensor v0 = v0_in.contiguous();
  const at::Tensor gain = gain_in.contiguous();
  const int64_t B = z.size(1);
  const int64_t C = z.dim() > 2 ? z.size(2) : 1;
  const int64_t K = threshold.size(0);
  const int64_t H = static_cast<int64_t>(horizons.size());
  const int64_t plane = (B * C) > 0 ? a.numel() / (B * C) : 0;  // S: elements per plane
  const int64_t step = a.numel();                                 // z's time stride
  std::vector<int64_t> hs(horizons.begin(), horizons.end());

  // per (k, c, h), summed over samples; each channel is written by one task only
  std::vector<double> sums(static_cast<size_t>(K * C * H), 0.0);
  const float* zp = z.data_ptr<float>();
  const float* ap = a.data_ptr<float>();
  const float* thp = threshold.data_ptr<float>();
  const float* v0p = v0.data_ptr<float>();
  const float* gp = gain.data_ptr<float>();

  at::parallel_for(0, C, 1, [&](int64_t c_begin, int64_t c_end) {
    std::vector<float> v(static_cast<size_t>(plane)), n(static_cast<size_t>(plane));
    for (int64_t c = c_begin; c < c_end; ++c) {
      for (int64_t b = 0; b < B; ++b) {
        const float* zb = zp + (b * C + c) * plane;
        const float* ab = ap + (b * C + c) * plane;
        for (int64_t k = 0; k < K; ++k) {
          sweep_plane(zb, step, ab, plane, hs.data(), H, thp[k * C + c], v0p[k * C + c],
                      gp[k * C + c], v.data(), n.data(), sums.data() + (k * C + c) * H);
        }
      }
    }
  });

  at::Tensor result = at::zeros({K, C}, z.options().dtype(at::kDouble));
  double* rp = result.data_ptr<double>();
  const double first = static_cast<double>(hs[0]);
  for (int64_t kc = 0; kc < K * C; ++kc) {
    for (int64_t h = 0; h < H; ++h) {
      rp[kc] += (static_cast<double>(hs[h]) / first) * sums[kc * H + h];
    }
  }
  return result;
}

}  // namespace
}  // namespace ann2snn

TORCH_LIBRARY_IMPL(ann2snn, CPU, m) { m.impl("if_sweep_errors", &ann2snn::if_sweep_errors_cpu); }
