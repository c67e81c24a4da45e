// streamsense::row_int8_linear: RowInt8Linear.forward (models/sentiment.py) in two passes around the int8 GEMM.
//
// The Python forward runs ~12 ops around each GEMM (abs, amax, clamp, div, round, to int8, to float, two
// scale multiplies, bias add, reshapes), each a full pass over memory plus its dispatch; here the per-row
// quantization is one pass and the dequantization one more. Every float operation is the one torch does, in
// the same order (built with -ffp-contract=off, so no fused multiply-adds: FLAGS in models/int8_kernel.py), so
// the output is equal to the Python forward to the last bit: the op is a faster path, not another model.
#include <torch/library.h>
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <cstdint>
#include <vector>

namespace {

void quantize_rows(const float* x, int64_t rows, int64_t k, int8_t* q, float* scales) {
  at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
    // adding then subtracting 1.5 * 2^23 leaves no fraction bits, so the FPU's default mode rounds half to
    // even (torch.round's rule) for |v| < 2^22, in a form that vectorizes (|v| <= 127 here)
    constexpr float magic = 12582912.0f;
    for (int64_t r = begin; r < end; ++r) {
      const float* row = x + r * k;
      float amax = 0.0f;
#pragma omp simd reduction(max : amax)
      for (int64_t i = 0; i < k; ++i) {
        const float a = std::fabs(row[i]);
        amax = a > amax ? a : amax;
      }
      const float scale = (amax > 1e-12f ? amax : 1e-12f) / 127.0f;
      scales[r] = scale;
      int8_t* out = q + r * k;
#pragma omp simd
      for (int64_t i = 0; i < k; ++i) {
        out[i] = static_cast<int8_t>(static_cast<int32_t>((row[i] / scale + magic) - magic));
      }
    }
  });
}

// out[r][j] = (acc[r][j] * row_scale[r]) * col_scale[j] (+ bias[j]): torch's mul_, mul_, add_ in one pass.
// `out` may be `acc` itself (same size): each element is read before it is written.
void dequantize_rows(const int32_t* acc, int64_t rows, int64_t n, const float* row_scale, const float* col_scale,
                     const float* bias, float* out) {
  at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const float s = row_scale[r];
      const int32_t* in = acc + r * n;
      float* o = out + r * n;
      if (bias != nullptr) {
        for (int64_t j = 0; j < n; ++j) o[j] = (static_cast<float>(in[j]) * s) * col_scale[j] + bias[j];
      } else {
        for (int64_t j = 0; j < n; ++j) o[j] = (static_cast<float>(in[j]) * s) * col_scale[j];
      }
    }
  });
}

}  // namespace

at::Tensor row_int8_linear(const at::Tensor& x, const at::Tensor& weight_t, const at::Tensor& weight_scale,
                           const c10::optional<at::Tensor>& bias) {
  TORCH_CHECK(x.scalar_type() == at::kFloat, "row_int8_linear: x must be float32");
  TORCH_CHECK(weight_t.scalar_type() == at::kChar && weight_t.dim() == 2, "row_int8_linear: weight_t must be 2-D int8");
  const int64_t k = x.size(-1);
  const int64_t n = weight_t.size(1);
  TORCH_CHECK(weight_t.size(0) == k, "row_int8_linear: x has ", k, " features, weight_t expects ", weight_t.size(0));
  TORCH_CHECK(weight_scale.scalar_type() == at::kFloat && weight_scale.numel() == n,
              "row_int8_linear: weight_scale must hold ", n, " float32 scales");
  const at::Tensor b = bias.has_value() && bias->defined() ? bias->contiguous() : at::Tensor();
  TORCH_CHECK(!b.defined() || (b.scalar_type() == at::kFloat && b.numel() == n),
              "row_int8_linear: bias must hold ", n, " float32 values");
  const at::Tensor rows = x.reshape({-1, k}).contiguous();
  const int64_t m = rows.size(0);
  at::Tensor q = at::empty({m, k}, rows.options().dtype(at::kChar));
  at::Tensor scales = at::empty({m}, rows.options());
  quantize_rows(rows.data_ptr<float>(), m, k, q.data_ptr<int8_t>(), scales.data_ptr<float>());

  at::Tensor acc = at::_int_mm(q, weight_t).contiguous();  // (m, n) int32, exact
  at::Tensor out = acc.view(at::kFloat);  // dequantized in place
  const at::Tensor ws = weight_scale.contiguous();
  dequantize_rows(acc.data_ptr<int32_t>(), m, n, scales.data_ptr<float>(), ws.data_ptr<float>(),
                  b.defined() ? b.data_ptr<float>() : nullptr, out.data_ptr<float>());
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end() - 1);
  shape.push_back(n);
  return out.view(shape);
}

TORCH_LIBRARY(streamsense, m) {
  m.def("row_int8_linear(Tensor x, Tensor weight_t, Tensor weight_scale, Tensor? bias) -> Tensor");
}

TORCH_LIBRARY_IMPL(streamsense, CPU, m) {
  m.impl("row_int8_linear", row_int8_linear);
}
