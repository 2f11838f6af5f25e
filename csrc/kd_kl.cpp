// Op schemas (TORCH_LIBRARY), shared argument checks, and the pybind11 module asrkd._C.
// Kernels register themselves per backend: cpu/kd_kl.cpp and cuda/kd_kl.cu.
#include "kd_kl.h"

#include <ATen/ATen.h>
#include <torch/library.h>
#include <torch/extension.h>

#include <cmath>

namespace asrkd {

namespace {

bool is_float(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

KdKlArgs check_common(const at::Tensor& student, const std::optional<at::Tensor>& lengths,
                      const std::optional<at::Tensor>& weights, double temperature,
                      std::string_view reduction, bool compute_grad) {
  TORCH_CHECK(student.dim() == 3, "asrkd: student must have shape (B, T, V), got ", student.sizes());
  TORCH_CHECK(is_float(student.scalar_type()),
              "asrkd: student must be float32/float64/float16/bfloat16, got ", student.scalar_type());
  TORCH_CHECK(student.size(2) >= 1, "asrkd: student must have V >= 1, got ", student.sizes());
  TORCH_CHECK(student.size(2) == 1 || student.stride(2) == 1, "asrkd: student's last (V) dimension must be contiguous");
  TORCH_CHECK(temperature >= kMinTemperature && temperature <= kMaxTemperature,  // NaN fails too
              "asrkd: temperature must be a finite number in [", kMinTemperature, ", ", kMaxTemperature, "], got ",
              temperature);
  KdKlArgs a;
  a.B = student.size(0);
  a.T = student.size(1);
  a.V = student.size(2);
  a.temperature = temperature;
  a.compute_grad = compute_grad;
  a.reduction = parse_reduction(reduction);
  if (lengths.has_value()) {
    const auto& l = *lengths;
    TORCH_CHECK(l.scalar_type() == at::kLong, "asrkd: lengths must be int64, got ", l.scalar_type());
    TORCH_CHECK(l.dim() == 1 && l.size(0) == a.B, "asrkd: lengths must have shape (B,) = (", a.B,
                ",), got ", l.sizes());
    TORCH_CHECK(l.device() == student.device(), "asrkd: lengths is on ", l.device(),
                " but student is on ", student.device());
  }
  if (weights.has_value()) {
    const auto& w = *weights;
    TORCH_CHECK(w.scalar_type() == at::kFloat, "asrkd: weights must be float32, got ", w.scalar_type());
    TORCH_CHECK(w.dim() == 2 && w.size(0) == a.B && w.size(1) == a.T,
                "asrkd: weights must have shape (B, T) = (", a.B, ", ", a.T, "), got ", w.sizes());
    TORCH_CHECK(w.is_contiguous(), "asrkd: weights must be contiguous");
    TORCH_CHECK(w.device() == student.device(), "asrkd: weights is on ", w.device(),
                " but student is on ", student.device());
  }
  return a;
}

}  // namespace

Reduction parse_reduction(std::string_view name) {
  if (name == "mean") return Reduction::Mean;
  if (name == "sum") return Reduction::Sum;
  if (name == "batchmean") return Reduction::BatchMean;
  if (name == "none") return Reduction::None;
  TORCH_CHECK(false, "asrkd: reduction must be one of mean, sum, batchmean, none; got '", std::string(name), "'");
}

KdKlArgs check_dense_args(const at::Tensor& student, const at::Tensor& teacher,
                          const std::optional<at::Tensor>& lengths,
                          const std::optional<at::Tensor>& weights, double temperature,
                          std::string_view reduction, bool compute_grad) {
  KdKlArgs a = check_common(student, lengths, weights, temperature, reduction, compute_grad);
  TORCH_CHECK(teacher.dim() == 3 && teacher.size(0) == a.B && teacher.size(1) == a.T,
              "asrkd: teacher must have shape (B, T, V) matching student ", student.sizes(), ", got ",
              teacher.sizes());
  TORCH_CHECK(teacher.size(2) == a.V, "asrkd: teacher vocabulary size V=", teacher.size(2),
              " differs from student V=", a.V);
  TORCH_CHECK(is_float(teacher.scalar_type()),
              "asrkd: teacher must be float32/float64/float16/bfloat16, got ", teacher.scalar_type());
  TORCH_CHECK(teacher.size(2) == 1 || teacher.stride(2) == 1, "asrkd: teacher's last (V) dimension must be contiguous");
  TORCH_CHECK(teacher.device() == student.device(), "asrkd: teacher is on ", teacher.device(),
              " but student is on ", student.device());
  return a;
}

KdKlArgs check_topk_args(const at::Tensor& student, const at::Tensor& topk_idx,
                         const at::Tensor& topk_logprob, const std::optional<at::Tensor>& lengths,
                         const std::optional<at::Tensor>& weights, double temperature,
                         std::string_view reduction, bool compute_grad) {
  KdKlArgs a = check_common(student, lengths, weights, temperature, reduction, compute_grad);
  const auto it = topk_idx.scalar_type();
  TORCH_CHECK(it == at::kLong || it == at::kInt || it == at::kShort,
              "asrkd: topk_idx must be int64/int32/int16, got ", it);
  TORCH_CHECK(topk_idx.dim() == 3 && topk_idx.size(0) == a.B && topk_idx.size(1) == a.T,
              "asrkd: topk_idx must have shape (B, T, K) with (B, T) = (", a.B, ", ", a.T, "), got ",
              topk_idx.sizes());
  TORCH_CHECK(topk_logprob.sizes() == topk_idx.sizes(), "asrkd: topk_logprob must have the shape of topk_idx ",
              topk_idx.sizes(), ", got ", topk_logprob.sizes());
  TORCH_CHECK(is_float(topk_logprob.scalar_type()), "asrkd: topk_logprob must be a float tensor, got ",
              topk_logprob.scalar_type());
  const int64_t K = topk_idx.size(2);
  TORCH_CHECK(K >= 1 && K <= a.V, "asrkd: need 1 <= K <= V=", a.V, ", got K=", K);
  TORCH_CHECK(topk_idx.is_contiguous() && topk_logprob.is_contiguous(),
              "asrkd: topk_idx and topk_logprob must be contiguous");
  TORCH_CHECK(topk_idx.device() == student.device() && topk_logprob.device() == student.device(),
              "asrkd: topk_idx/topk_logprob must be on the student's device ", student.device());
  return a;
}

std::tuple<at::Tensor, at::Tensor> allocate_outputs(const at::Tensor& student, const KdKlArgs& a) {
  const auto acc = student.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor loss = at::empty({a.B, a.T}, student.options().dtype(acc));
  at::Tensor grad = a.compute_grad ? at::empty({a.B, a.T, a.V}, student.options())
                                   : at::empty({0}, student.options());
  return {loss, grad};
}

at::Tensor reduction_scale(const KdKlArgs& a, const at::Tensor& student, const std::optional<at::Tensor>& lengths,
                           const std::optional<at::Tensor>& weights) {
  const auto acc = student.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const auto opts = student.options().dtype(acc);
  switch (a.reduction) {
    case Reduction::None:
    case Reduction::Sum:
      return at::ones({}, opts);
    case Reduction::BatchMean:
      return at::full({}, 1.0 / static_cast<double>(std::max<int64_t>(a.B, 1)), opts);
    case Reduction::Mean:
      break;
  }
  at::Tensor denom;
  if (!weights.has_value() && !lengths.has_value()) {
    denom = at::full({}, static_cast<double>(a.B * a.T), opts);
  } else if (!weights.has_value()) {
    denom = lengths->clamp(0, a.T).sum().to(acc);
  } else {
    at::Tensor w = weights->to(acc);
    if (lengths.has_value()) {
      const at::Tensor mask = at::arange(a.T, lengths->options()).unsqueeze(0) < lengths->unsqueeze(1);
      w = at::where(mask, w, at::zeros({}, opts));  // not w * mask: NaN · 0 in padding would leak
    }
    denom = w.sum();
  }
  // An all-masked (or all-zero-weight) batch has loss 0 and gradient 0, never NaN.
  return at::where(denom != 0, denom.reciprocal(), at::zeros({}, opts));
}

at::Tensor reduce_loss(const KdKlArgs& a, const at::Tensor& per_frame, const at::Tensor& scale) {
  if (a.reduction == Reduction::None) return per_frame;
  return per_frame.sum() * scale;
}

}  // namespace asrkd

TORCH_LIBRARY(asrkd, m) {
  // Returns (loss: () or (B, T) for reduction "none",
  //          d loss / d student (B, T, V) in the student's dtype, or an empty tensor).
  m.def(
      "kd_kl_div_fwd(Tensor student, Tensor teacher, Tensor? lengths, Tensor? weights, "
      "float temperature, str reduction, bool compute_grad) -> (Tensor, Tensor)");
  m.def(
      "kd_kl_div_topk_fwd(Tensor student, Tensor topk_idx, Tensor topk_logprob, Tensor? lengths, "
      "Tensor? weights, float temperature, str reduction, bool compute_grad) -> (Tensor, Tensor)");
  // grad *= scale in place (scale: () or (B, T)); a no-op when scale is the scalar 1.
  m.def("kd_kl_scale_grad_(Tensor(a!) grad, Tensor scale) -> ()");
}

namespace {

bool has_cuda() {
#ifdef ASRKD_WITH_CUDA
  return true;
#else
  return false;
#endif
}

const char* cpu_capability() {
#if defined(ASRKD_CPU_CAPABILITY_AVX512)
  return "AVX512";
#elif defined(ASRKD_CPU_CAPABILITY_AVX2)
  return "AVX2";
#else
  return "DEFAULT";
#endif
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "asrkd compiled kernels; the ops live in torch.ops.asrkd";
  m.def("has_cuda", &has_cuda, "True when the CUDA kernels were compiled in");
  m.def("cpu_capability", &cpu_capability, "SIMD level the CPU kernel was compiled for");
}
