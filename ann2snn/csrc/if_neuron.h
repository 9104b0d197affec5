// Shared input checks and layout helpers for the ann2snn::if_multistep kernels.
//
// The op runs T steps of an integrate-and-fire neuron with soft reset, per element, in
// float32 and in exactly this order (see ann2snn/ops.py for the pure-torch reference):
//   v = v + x[t];  s[t] = (v >= theta) ? 1 : 0;  v = v - s[t] * theta
// The kernels must stay bit-identical to the reference, so they are compiled without
// floating-point contraction (no FMA): -ffp-contract=off / nvcc -fmad=false.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <string>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace ann2snn {

// Validates x [T, *S], v [S] and threshold (1 element, or S[1] elements for a
// per-channel threshold). Error messages match the Python reference's.
inline void check_if_inputs(const at::Tensor& x, const at::Tensor& v, const at::Tensor& threshold) {
  TORCH_CHECK(x.dim() >= 1,
              "ann2snn::if_multistep: x must have at least 1 dimension (time-major [T, *S]), "
              "got a 0-dim tensor");
  TORCH_CHECK(x.device() == v.device() && x.device() == threshold.device(),
              "ann2snn::if_multistep: x, v and threshold must be on the same device, got x on ",
              x.device(), ", v on ", v.device(), ", threshold on ", threshold.device());
  const auto xt = x.scalar_type();
  TORCH_CHECK(xt == at::kFloat || xt == at::kHalf || xt == at::kBFloat16,
              "ann2snn::if_multistep: x must be float32, float16 or bfloat16, got ", xt);
  TORCH_CHECK(v.scalar_type() == at::kFloat,
              "ann2snn::if_multistep: v (membrane potential) must be float32, got ",
              v.scalar_type());
  TORCH_CHECK(threshold.scalar_type() == at::kFloat,
              "ann2snn::if_multistep: threshold must be float32, got ", threshold.scalar_type());
  const auto step_shape = x.sizes().slice(1);
  TORCH_CHECK(v.sizes() == step_shape,
              "ann2snn::if_multistep: v must have shape x.shape[1:] = ", step_shape, ", got ",
              v.sizes());
  const int64_t n = threshold.numel();
  if (n == 1) {
    return;
  }
  TORCH_CHECK(step_shape.size() >= 2,
              "ann2snn::if_multistep: threshold must have 1 element (scalar threshold) because "
              "x.shape[1:] = ", step_shape, " has no channel dimension, got ", n, " elements");
  TORCH_CHECK(threshold.dim() == 1 && n == step_shape[1],
              "ann2snn::if_multistep: threshold must have 1 element (scalar threshold) or be "
              "1-D with S[1] = ", step_shape[1],
              " elements (one per channel, dim 2 of x), got shape ", threshold.sizes());
}

// x in a layout the kernels can read: each time step a contiguous block of S elements,
// consecutive steps time_stride elements apart. time_stride 0 means the input is
// constant in time (x0.unsqueeze(0).expand(T, *S)); that case is never materialized.
struct StepMajorInput {
  at::Tensor tensor;  // keeps the storage alive; data starts at tensor.data_ptr()
  int64_t time_stride;
};

inline bool steps_are_contiguous(const at::Tensor& x) {
  // Same rule as is_contiguous() applied to x[0]: only dims of size > 1 matter.
  int64_t expected = 1;
  for (int64_t d = x.dim() - 1; d >= 1; --d) {
    const int64_t size = x.size(d);
    if (size != 1) {
      if (x.stride(d) != expected) {
        return false;
      }
      expected *= size;
    }
  }
  return true;
}

inline StepMajorInput step_major_input(const at::Tensor& x) {
  const int64_t T = x.size(0);
  if (T > 1 && x.stride(0) == 0) {
    return {x.select(0, 0).contiguous(), 0};
  }
  if (steps_are_contiguous(x)) {
    const int64_t step_numel = T > 0 ? x.numel() / T : 0;
    return {x, T > 1 ? x.stride(0) : step_numel};
  }
  at::Tensor c = x.contiguous();
  return {c, T > 0 ? c.numel() / T : 0};
}

// Number of elements sharing one threshold value along the flattened S (1 for a scalar
// threshold, where channels == 1 too).
inline int64_t channel_inner_size(const at::Tensor& x, const at::Tensor& threshold) {
  if (threshold.numel() == 1) {
    return 1;
  }
  int64_t inner = 1;
  for (int64_t d = 3; d < x.dim(); ++d) {
    inner *= x.size(d);
  }
  return inner;
}

// Ask for transparent huge pages for a large, not yet touched output: with 4 KiB pages
// the first-touch page faults of a fresh 200 MB output cost several times the kernel
// (measured: 140 ms vs 25 ms for a fresh 205 MB copy), with 2 MiB pages a fraction.
inline void advise_huge_pages(const at::Tensor& t) {
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

}  // namespace ann2snn
