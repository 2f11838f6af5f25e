// Fused temperature-softmax KL divergence for knowledge distillation: shared declarations.
//
// Per frame (b, t) with valid t < lengths[b] and weight w = weights[b, t] (1 if absent):
//   p = softmax(teacher[b, t] / T), q = softmax(student[b, t] / T)
//   loss[b, t]    = w * T^2 * KL(p || q)
//   grad[b, t, :] = w * T * (q - p)            (d loss / d student)
// Padded frames get loss 0 and gradient 0 and their logits are never read.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

#include <string_view>
#include <tuple>

namespace asrkd {

// How per-frame losses are reduced. The gradient the forward writes is already scaled
// by the reduction's factor, so the backward multiplies by the incoming gradient only
// (and skips even that when it is exactly 1).
enum class Reduction { None, Mean, Sum, BatchMean };

// Argument bounds, repeated in asrkd/ops/_validate.py (which gives the measured figures). T² · KL
// with KL ~ 1/T²: the fp32 loss of a frame carries an absolute error of up to ~4·T²·eps (5e-3 at
// T = 100) whatever its size, the gradient stays within 2e-5 of its largest entry; 1/T <= 1000
// keeps logits / T finite. Stored top-k log-probs are rounded (fp16 in caches): a value may come
// out a hair above 0 and the K probabilities a little above 1 in sum; more is not rounding.
constexpr double kMinTemperature = 1e-3;
constexpr double kMaxTemperature = 100.0;
constexpr double kTopkLogprobTol = 1e-3;
constexpr double kTopkMassTol = 1e-2;
Reduction parse_reduction(std::string_view name);

struct KdKlArgs {
  int64_t B = 0, T = 0, V = 0;
  double temperature = 1.0;
  bool compute_grad = false;
  Reduction reduction = Reduction::Mean;
};

// Checks shared by every backend; throws c10::Error naming the argument.
KdKlArgs check_dense_args(const at::Tensor& student, const at::Tensor& teacher,
                          const std::optional<at::Tensor>& lengths,
                          const std::optional<at::Tensor>& weights, double temperature,
                          std::string_view reduction, bool compute_grad);
KdKlArgs check_topk_args(const at::Tensor& student, const at::Tensor& topk_idx,
                         const at::Tensor& topk_logprob, const std::optional<at::Tensor>& lengths,
                         const std::optional<at::Tensor>& weights, double temperature,
                         std::string_view reduction, bool compute_grad);

// Outputs: per-frame loss (B, T) in float32 (float64 for float64 students) and the
// gradient (B, T, V) contiguous in the student's dtype (empty when !compute_grad).
std::tuple<at::Tensor, at::Tensor> allocate_outputs(const at::Tensor& student, const KdKlArgs& a);

// The reduction's factor as a 0-dim tensor on the student's device (no host sync):
// mean -> 1 / Σ_valid w (0 when that is 0), batchmean -> 1 / B, sum and none -> 1.
at::Tensor reduction_scale(const KdKlArgs& a, const at::Tensor& student, const std::optional<at::Tensor>& lengths,
                           const std::optional<at::Tensor>& weights);

// Reduce per-frame losses (B, T) with the factor above: () or (B, T) for none.
at::Tensor reduce_loss(const KdKlArgs& a, const at::Tensor& per_frame, const at::Tensor& scale);

}  // namespace asrkd
