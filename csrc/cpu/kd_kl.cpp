// CPU kernels of the fused KD ops: at::parallel_for over frames, at::vec::Vectorized
// within a frame. Each frame is processed in three sweeps over a small per-thread buffer
// that stays in L1/L2: (1) load + convert + row max, (2) scale by 1/T and centre (one FMA),
// exps and the sums, (3) the gradient. Student and teacher are read from memory once and the
// gradient written once; accumulation is fp32 (fp64 when an input is fp64).
#include "kd_kl.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#ifdef __linux__
#include <sys/mman.h>
#endif
#if defined(CPU_CAPABILITY_AVX512)
#include <immintrin.h>
#endif

namespace asrkd {
namespace cpu {
namespace {

using at::vec::Vectorized;

template <typename T>
constexpr bool is_reduced_float_v = std::is_same_v<T, at::BFloat16> || std::is_same_v<T, at::Half>;

inline int64_t round_up(int64_t n, int64_t m) { return (n + m - 1) / m * m; }

template <typename acc_t>
inline acc_t nan_max(acc_t m, acc_t x) {
  return (x > m || std::isnan(x)) ? x : m;
}

template <typename acc_t>
acc_t vec_max_all(const Vectorized<acc_t>& v) {
  return at::vec::vec_reduce_all<acc_t>(
      [](Vectorized<acc_t>& a, Vectorized<acc_t>& b) { return at::vec::maximum(a, b); }, v);
}

template <typename acc_t>
acc_t vec_sum_all(const Vectorized<acc_t>& v) {
  return at::vec::vec_reduce_all<acc_t>([](Vectorized<acc_t>& a, Vectorized<acc_t>& b) { return a + b; }, v);
}

// dst[i] = src[i] for i < n (converted to acc_t), -inf up to n_pad (so later sweeps need no
// tail code). Returns the row max (NaN if any element is NaN). The 1/T scaling is left to the
// next sweep, where it rides on the centring FMA: max(x) / T is the max of the x / T because
// rounding is monotonic, so the row max is the same number either way.
template <typename acc_t, typename src_t>
acc_t load_row(const src_t* src, acc_t* dst, int64_t n, int64_t n_pad) {
  using Vec = Vectorized<acc_t>;
  constexpr int64_t W = Vec::size();
  const acc_t ninf = -std::numeric_limits<acc_t>::infinity();
  Vec vmax(ninf);
  int64_t i = 0;
  if constexpr (std::is_same_v<acc_t, src_t>) {
    for (; i + W <= n; i += W) {
      const Vec x = Vec::loadu(src + i);
      x.store(dst + i);
      vmax = at::vec::maximum(vmax, x);
    }
  } else if constexpr (std::is_same_v<acc_t, float> && is_reduced_float_v<src_t>) {
    using BVec = Vectorized<src_t>;
    static_assert(BVec::size() == 2 * W, "reduced-float vector must hold two float vectors");
    for (; i + 2 * W <= n; i += 2 * W) {
      auto [x0, x1] = at::vec::convert_to_float<src_t>(BVec::loadu(src + i));
      x0.store(dst + i);
      x1.store(dst + i + W);
      vmax = at::vec::maximum(vmax, at::vec::maximum(x0, x1));
    }
  }
  acc_t m = vec_max_all(vmax);
  for (; i < n; ++i) {
    const acc_t x = static_cast<acc_t>(src[i]);
    dst[i] = x;
    m = nan_max(m, x);
  }
  for (; i < n_pad; ++i) dst[i] = ninf;
  return m;
}

// (x / T) - m with one rounding instead of two: x * (1/T) - m as an FMA (m = the scaled max).
template <typename acc_t>
inline Vectorized<acc_t> centre(const Vectorized<acc_t>& x, const Vectorized<acc_t>& inv_t,
                                const Vectorized<acc_t>& m) {
  return at::vec::fmsub(x, inv_t, m);
}

// exp of a centred logit (x <= 0 or -inf); results below FLT_MIN are 0, as exp_u20 gives them
// (a teacher token that far below the max is a zero-probability token for the cross term).
// On AVX-512 fp32 the exps are most of sweep (2): exp_u20 spends ~19 instructions on range
// clamps and a hand-built 2^n; with the centred range known, a Cody-Waite reduction, a degree-7
// polynomial and scalef (2^n with the zero lanes masked) take 13, and the error drops from
// exp_u20's 20 ulp to < 1 ulp (checked against libm on every float in [ln FLT_MIN, 0]; the fp32
// gradient's error against the fp64 reference went from 1e-5 to 1e-6 of its largest entry).
// With the FMA centring and the masked cross term: 5-10 % less kernel time at the benchmark's
// three shapes (same-process A/B of the two builds, 1 and 2 threads).
template <typename acc_t>
inline Vectorized<acc_t> exp_centred(const Vectorized<acc_t>& x) {
  return x.exp_u20();
}

// cross + (e_t > 0 ? e_t * (x_t - x_s) : 0): 0 · log 0 = 0 for tokens the teacher gives no mass.
template <typename acc_t>
inline Vectorized<acc_t> add_cross(const Vectorized<acc_t>& cross, const Vectorized<acc_t>& et,
                                   const Vectorized<acc_t>& xt, const Vectorized<acc_t>& xs) {
  const Vectorized<acc_t> zero(0);
  return cross + Vectorized<acc_t>::blendv(zero, et * (xt - xs), et > zero);
}

#if defined(CPU_CAPABILITY_AVX512)
template <>
inline Vectorized<float> exp_centred<float>(const Vectorized<float>& xv) {
  const __m512 x = xv;
  const __mmask16 live = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-87.3365479f), _CMP_GE_OQ);  // ln FLT_MIN
  const __m512 n =
      _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504f)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  // x - n ln 2 in two parts (Cephes' split of ln 2); -inf lanes turn NaN here and are masked below.
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);  // Cephes expf's minimax coefficients
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f));
  return _mm512_maskz_scalef_ps(live, p, n);
}

// The same in 3 instructions instead of 7 (a compare into a mask register and a masked FMA).
template <>
inline Vectorized<float> add_cross<float>(const Vectorized<float>& cross, const Vectorized<float>& et,
                                          const Vectorized<float>& xt, const Vectorized<float>& xs) {
  const __mmask16 live = _mm512_cmp_ps_mask(et, _mm512_setzero_ps(), _CMP_GT_OQ);
  return _mm512_mask3_fmadd_ps(et, _mm512_sub_ps(xt, xs), cross, live);
}
#endif

// out[i] = a[i] * ca - b[i] * cb  (b == nullptr: out[i] = a[i] * ca - cb), converted to dst_t.
template <typename acc_t, typename dst_t>
void store_diff(const acc_t* a, acc_t ca, const acc_t* b, acc_t cb, dst_t* out, int64_t n) {
  using Vec = Vectorized<acc_t>;
  constexpr int64_t W = Vec::size();
  const Vec vca(ca), vcb(cb);
  auto at_i = [&](int64_t i) { return b ? Vec::loadu(a + i) * vca - Vec::loadu(b + i) * vcb : Vec::loadu(a + i) * vca - vcb; };
  int64_t i = 0;
  if constexpr (std::is_same_v<acc_t, dst_t>) {
    for (; i + W <= n; i += W) at_i(i).store(out + i);
  } else if constexpr (std::is_same_v<acc_t, float> && is_reduced_float_v<dst_t>) {
    for (; i + 2 * W <= n; i += 2 * W) {
      at::vec::convert_from_float<dst_t>(at_i(i), at_i(i + W)).store(out + i);
    }
  }
  for (; i < n; ++i) out[i] = static_cast<dst_t>(a[i] * ca - (b ? b[i] * cb : cb));
}

// A frame whose loss and whole gradient row are one value: 0 when masked, NaN when undefined.
template <typename loss_t, typename scalar_t>
void set_frame(loss_t* loss, scalar_t* g_row, int64_t V, double value) {
  *loss = static_cast<loss_t>(value);
  if (g_row) std::fill(g_row, g_row + V, static_cast<scalar_t>(value));
}

template <typename T>
using acc_of = std::conditional_t<std::is_same_v<T, double>, double, float>;

// Frame validity and weight: (valid, w). Padded or zero-weight frames are skipped.
struct FrameInfo {
  bool skip;
  double w;
};

// (b, t) of consecutive frames without two integer divisions per frame.
struct FrameCursor {
  int64_t b, t, T;
  FrameCursor(int64_t row, int64_t T_) : b(row / T_), t(row % T_), T(T_) {}
  void next() {
    if (++t == T) {
      t = 0;
      ++b;
    }
  }
};

inline FrameInfo frame_info(int64_t b, int64_t t, int64_t T, const int64_t* len, const float* w) {
  if (len && t >= len[b]) return {true, 0.0};
  const double wt = w ? static_cast<double>(w[b * T + t]) : 1.0;
  return {wt == 0.0, wt};
}

inline int64_t grain_rows(int64_t V) { return std::max<int64_t>(1, at::internal::GRAIN_SIZE / std::max<int64_t>(V, 1)); }

// Loads n <= NV * W logits of a frame into NV vectors (unscaled, as load_row); lanes past n get -inf.
template <int NV, typename acc_t, typename src_t>
inline void load_frame(const src_t* src, int64_t n, Vectorized<acc_t> (&x)[NV]) {
  using Vec = Vectorized<acc_t>;
  constexpr int64_t W = Vec::size();
  const Vec ninf(-std::numeric_limits<acc_t>::infinity());
  if constexpr (std::is_same_v<acc_t, src_t>) {
    for (int k = 0; k < NV; ++k) {
      const int64_t i = k * W;
      if (i + W <= n) {
        x[k] = Vec::loadu(src + i);
      } else {
        x[k] = Vec::set(ninf, Vec::loadu(src + i, std::max<int64_t>(n - i, 0)), std::max<int64_t>(n - i, 0));
      }
    }
  } else {
    alignas(64) acc_t buf[NV * W];
    for (int64_t i = 0; i < NV * W; ++i) buf[i] = i < n ? static_cast<acc_t>(src[i]) : -std::numeric_limits<acc_t>::infinity();
    for (int k = 0; k < NV; ++k) x[k] = Vec::loadu(buf + k * W);
  }
}

template <int NV, typename acc_t, typename dst_t>
inline void store_frame(const Vectorized<acc_t> (&g)[NV], dst_t* out, int64_t n) {
  using Vec = Vectorized<acc_t>;
  constexpr int64_t W = Vec::size();
  if constexpr (std::is_same_v<acc_t, dst_t>) {
    for (int k = 0; k < NV; ++k) {
      const int64_t i = k * W;
      if (i + W <= n) {
        g[k].store(out + i);
      } else if (i < n) {
        g[k].store(out + i, n - i);
      }
    }
  } else {
    alignas(64) acc_t buf[NV * W];
    for (int k = 0; k < NV; ++k) g[k].store(buf + k * W);
    for (int64_t i = 0; i < n; ++i) out[i] = static_cast<dst_t>(buf[i]);
  }
}

// Character-CTC vocabularies (V <= 4 vectors): the frame stays in registers, no buffers.
template <int NV, typename scalar_t, typename teacher_t, typename acc_t, typename loss_t>
void dense_rows_small(const scalar_t* s_ptr, int64_t s_sb, int64_t s_st, const teacher_t* t_ptr, int64_t t_sb,
                      int64_t t_st, const int64_t* len, const float* wts, double grad_scale, const KdKlArgs& a,
                      loss_t* l_ptr, scalar_t* g_ptr, int64_t begin, int64_t end);

template <typename scalar_t, typename teacher_t>
void dense_kernel(const at::Tensor& student, const at::Tensor& teacher, const int64_t* len, const float* wts,
                  double grad_scale, const KdKlArgs& a, at::Tensor& loss, at::Tensor& grad) {
  using acc_t = std::conditional_t<std::is_same_v<scalar_t, double> || std::is_same_v<teacher_t, double>, double, float>;
  using loss_t = acc_of<scalar_t>;
  using Vec = Vectorized<acc_t>;
  constexpr int64_t W = Vec::size();
  const int64_t B = a.B, T = a.T, V = a.V, Vpad = round_up(V, W);
  const scalar_t* s_ptr = student.const_data_ptr<scalar_t>();
  const teacher_t* t_ptr = teacher.const_data_ptr<teacher_t>();
  const int64_t s_sb = student.stride(0), s_st = student.stride(1);
  const int64_t t_sb = teacher.stride(0), t_st = teacher.stride(1);
  loss_t* l_ptr = loss.mutable_data_ptr<loss_t>();
  scalar_t* g_ptr = a.compute_grad ? grad.mutable_data_ptr<scalar_t>() : nullptr;
  const acc_t temp = static_cast<acc_t>(a.temperature), inv_t = acc_t(1) / temp;
  const acc_t nan = std::numeric_limits<acc_t>::quiet_NaN();

  if (V <= 4 * W) {
    at::parallel_for(0, B * T, grain_rows(V), [&](int64_t begin, int64_t end) {
      auto run = [&](auto nv) {
        dense_rows_small<decltype(nv)::value, scalar_t, teacher_t, acc_t, loss_t>(
            s_ptr, s_sb, s_st, t_ptr, t_sb, t_st, len, wts, grad_scale, a, l_ptr, g_ptr, begin, end);
      };
      if (V <= W) run(std::integral_constant<int, 1>{});
      else if (V <= 2 * W) run(std::integral_constant<int, 2>{});
      else if (V <= 3 * W) run(std::integral_constant<int, 3>{});
      else run(std::integral_constant<int, 4>{});
    });
    return;
  }

  at::parallel_for(0, B * T, grain_rows(V), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> buf(2 * Vpad);
    acc_t* bs = buf.data();
    acc_t* bt = buf.data() + Vpad;
    const Vec vinv_t(inv_t);
    FrameCursor cur(begin, T);
    for (int64_t r = begin; r < end; ++r, cur.next()) {
      const int64_t b = cur.b, t = cur.t;
      scalar_t* g_row = g_ptr ? g_ptr + r * V : nullptr;
      const FrameInfo fi = frame_info(b, t, T, len, wts);
      if (fi.skip) {
        set_frame(l_ptr + r, g_row, V, 0.0);
        continue;
      }
      const acc_t w = static_cast<acc_t>(fi.w);
      const acc_t ms = load_row(s_ptr + b * s_sb + t * s_st, bs, V, Vpad) * inv_t;
      const acc_t mt = load_row(t_ptr + b * t_sb + t * t_st, bt, V, Vpad) * inv_t;
      if (!std::isfinite(ms) || !std::isfinite(mt)) {
        // NaN/+inf anywhere, or a row of only -inf: the distribution is undefined; say so.
        set_frame(l_ptr + r, g_row, V, nan);
        continue;
      }
      // Centred logits keep large common offsets (e.g. ±1e4) from cancelling badly.
      const Vec vms(ms), vmt(mt);
      Vec sum_s(0), sum_t(0), cross(0);
      for (int64_t i = 0; i < Vpad; i += W) {
        const Vec xs = centre(Vec::loadu(bs + i), vinv_t, vms);
        const Vec xt = centre(Vec::loadu(bt + i), vinv_t, vmt);
        const Vec es = exp_centred(xs);
        const Vec et = exp_centred(xt);
        sum_s += es;
        sum_t += et;
        // Σ e_t (x_t - x_s) over tokens the teacher gives mass: 0·log 0 = 0 (teacher -inf).
        cross = add_cross(cross, et, xt, xs);
        es.store(bs + i);
        et.store(bt + i);
      }
      const acc_t zs = vec_sum_all(sum_s), zt = vec_sum_all(sum_t);
      const acc_t kl = vec_sum_all(cross) / zt + std::log(zs / zt);
      l_ptr[r] = static_cast<loss_t>(w * temp * temp * kl);
      if (g_row) {
        const acc_t c = static_cast<acc_t>(fi.w * a.temperature * grad_scale);
        store_diff<acc_t, scalar_t>(bs, c / zs, bt, c / zt, g_row, V);
      }
    }
  });
}

template <int NV, typename scalar_t, typename teacher_t, typename acc_t, typename loss_t>
void dense_rows_small(const scalar_t* s_ptr, int64_t s_sb, int64_t s_st, const teacher_t* t_ptr, int64_t t_sb,
                      int64_t t_st, const int64_t* len, const float* wts, double grad_scale, const KdKlArgs& a,
                      loss_t* l_ptr, scalar_t* g_ptr, int64_t begin, int64_t end) {
  using Vec = Vectorized<acc_t>;
  const int64_t T = a.T, V = a.V;
  const acc_t temp = static_cast<acc_t>(a.temperature), inv_t = acc_t(1) / temp;
  const acc_t nan = std::numeric_limits<acc_t>::quiet_NaN();
  const Vec vinv_t(inv_t);
  FrameCursor cur(begin, T);
  for (int64_t r = begin; r < end; ++r, cur.next()) {
    const int64_t b = cur.b, t = cur.t;
    scalar_t* g_row = g_ptr ? g_ptr + r * V : nullptr;
    const FrameInfo fi = frame_info(b, t, T, len, wts);
    if (fi.skip) {
      set_frame(l_ptr + r, g_row, V, 0.0);
      continue;
    }
    Vec xs[NV], xt[NV];
    load_frame<NV>(s_ptr + b * s_sb + t * s_st, V, xs);
    load_frame<NV>(t_ptr + b * t_sb + t * t_st, V, xt);
    Vec vms = xs[0], vmt = xt[0];
    for (int k = 1; k < NV; ++k) {
      vms = at::vec::maximum(vms, xs[k]);
      vmt = at::vec::maximum(vmt, xt[k]);
    }
    const acc_t ms = vec_max_all(vms) * inv_t, mt = vec_max_all(vmt) * inv_t;
    if (!std::isfinite(ms) || !std::isfinite(mt)) {
      set_frame(l_ptr + r, g_row, V, nan);
      continue;
    }
    vms = Vec(ms);
    vmt = Vec(mt);
    Vec sum_s(0), sum_t(0), cross(0);
    for (int k = 0; k < NV; ++k) {
      const Vec cs = centre(xs[k], vinv_t, vms), ct = centre(xt[k], vinv_t, vmt);
      xs[k] = exp_centred(cs);
      xt[k] = exp_centred(ct);
      sum_s += xs[k];
      sum_t += xt[k];
      cross = add_cross(cross, xt[k], ct, cs);
    }
    const acc_t zs = vec_sum_all(sum_s), zt = vec_sum_all(sum_t);
    l_ptr[r] = static_cast<loss_t>(static_cast<acc_t>(fi.w) * temp * temp * (vec_sum_all(cross) / zt + std::log(zs / zt)));
    if (g_row) {
      const acc_t c = static_cast<acc_t>(fi.w * a.temperature * grad_scale);
      const Vec cs(c / zs), ct(c / zt);
      Vec g[NV];
      for (int k = 0; k < NV; ++k) g[k] = xs[k] * cs - xt[k] * ct;
      store_frame<NV>(g, g_row, V);
    }
  }
}

template <typename scalar_t>
void topk_kernel(const at::Tensor& student, const at::Tensor& topk_idx, const at::Tensor& topk_lp, const int64_t* len,
                 const float* wts, double grad_scale, const KdKlArgs& a, at::Tensor& loss, at::Tensor& grad) {
  using acc_t = acc_of<scalar_t>;
  using Vec = Vectorized<acc_t>;
  constexpr int64_t W = Vec::size();
  const int64_t B = a.B, T = a.T, V = a.V, K = topk_idx.size(2), Vpad = round_up(V, W);
  const int64_t n_tail = V - K;
  const scalar_t* s_ptr = student.const_data_ptr<scalar_t>();
  const int64_t s_sb = student.stride(0), s_st = student.stride(1);
  const int64_t* idx_ptr = topk_idx.const_data_ptr<int64_t>();
  const acc_t* lp_ptr = topk_lp.const_data_ptr<acc_t>();
  acc_t* l_ptr = loss.mutable_data_ptr<acc_t>();
  scalar_t* g_ptr = a.compute_grad ? grad.mutable_data_ptr<scalar_t>() : nullptr;
  const double temp = a.temperature, inv_t = 1.0 / temp;
  const acc_t nan = std::numeric_limits<acc_t>::quiet_NaN();
  const double ninf = -std::numeric_limits<double>::infinity();

  at::parallel_for(0, B * T, grain_rows(V), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> buf(Vpad);
    std::vector<double> y(K);
    // Token ids seen in the current frame: marked and cleared again per frame, O(K) (no sort).
    std::vector<uint8_t> seen(V, 0);
    acc_t* bs = buf.data();
    const Vec vinv_t(static_cast<acc_t>(inv_t));
    FrameCursor cur(begin, T);
    for (int64_t r = begin; r < end; ++r, cur.next()) {
      const int64_t b = cur.b, t = cur.t;
      scalar_t* g_row = g_ptr ? g_ptr + r * V : nullptr;
      const FrameInfo fi = frame_info(b, t, T, len, wts);
      if (fi.skip) {
        set_frame(l_ptr + r, g_row, V, 0.0);
        continue;
      }
      const scalar_t* s_row = s_ptr + b * s_sb + t * s_st;
      const int64_t* idx = idx_ptr + r * K;
      const acc_t* lp = lp_ptr + r * K;
      const acc_t ms = load_row(s_row, bs, V, Vpad) * static_cast<acc_t>(inv_t);

      // Teacher: K tempered log-probs plus the tail mass spread evenly over V - K tokens.
      double mass = 0, mt = ninf;
      bool bad = !std::isfinite(ms);
      for (int64_t k = 0; k < K; ++k) {
        // Python validates the ids, but not under torch.compile nor for a direct op call
        TORCH_CHECK(idx[k] >= 0 && idx[k] < V, "asrkd: topk_idx holds ", idx[k], ", outside [0, V=", V, ")");
        TORCH_CHECK_VALUE(!seen[idx[k]], "asrkd: topk_idx must hold distinct token ids within each frame, got ",
                          idx[k], " twice at frame (", b, ", ", t, ")");
        seen[idx[k]] = 1;
        TORCH_CHECK(!(lp[k] > kTopkLogprobTol), "asrkd: topk_logprob holds ", lp[k], " > 0 (tolerance ",
                    kTopkLogprobTol, ") at frame (", b, ", ", t, ")");
        bad |= std::isnan(lp[k]);  // NaN: no distribution, a NaN frame as for a dense teacher
        mass += std::exp(static_cast<double>(lp[k]));
        y[k] = static_cast<double>(lp[k]) * inv_t;
        mt = std::max(mt, y[k]);
      }
      for (int64_t k = 0; k < K; ++k) seen[idx[k]] = 0;
      TORCH_CHECK(!(mass > 1.0 + kTopkMassTol), "asrkd: topk_logprob's probabilities sum to ", mass,
                  " > 1 (tolerance ", kTopkMassTol, ") at frame (", b, ", ", t, ")");
      const double rest = std::max(1.0 - mass, 0.0);
      const double y_tail = (n_tail > 0 && rest > 0) ? (std::log(rest) - std::log(double(n_tail))) * inv_t : ninf;
      mt = std::max(mt, y_tail);
      if (bad || !std::isfinite(mt)) {
        set_frame(l_ptr + r, g_row, V, nan);
        continue;
      }
      double zt = n_tail > 0 ? double(n_tail) * std::exp(y_tail - mt) : 0.0;
      for (int64_t k = 0; k < K; ++k) zt += std::exp(y[k] - mt);
      const double log_zt = std::log(zt);

      // Student: exps, their sum, and Σ of centred logits over the V real tokens.
      const Vec vms(ms);
      Vec sum_s(0), sum_x(0);
      for (int64_t i = 0; i < Vpad; i += W) {
        const Vec xs = centre(Vec::loadu(bs + i), vinv_t, vms);
        const Vec es = exp_centred(xs);
        sum_s += es;
        sum_x += (i + W <= V) ? xs : Vec::set(Vec(0), xs, V - i);
        es.store(bs + i);
      }
      const double zs = vec_sum_all(sum_s), log_zs = std::log(zs);
      // Σ_j log q_j over all tokens, then the top-k terms and the tail remainder.
      const double sum_log_q = static_cast<double>(vec_sum_all(sum_x)) - double(V) * log_zs;
      const double log_p_tail = y_tail - mt - log_zt;
      const double p_tail = std::exp(log_p_tail);
      double kl = 0, sum_log_q_topk = 0;
      for (int64_t k = 0; k < K; ++k) {
        const double log_q = (static_cast<double>(s_row[idx[k]]) * inv_t - ms) - log_zs;
        sum_log_q_topk += log_q;
        const double log_p = y[k] - mt - log_zt;
        if (log_p > ninf) kl += std::exp(log_p) * (log_p - log_q);
      }
      if (p_tail > 0) kl += p_tail * (double(n_tail) * log_p_tail - (sum_log_q - sum_log_q_topk));
      const double w = fi.w;
      l_ptr[r] = static_cast<acc_t>(w * temp * temp * kl);
      if (g_row) {
        const double c = w * temp * grad_scale;
        store_diff<acc_t, scalar_t>(bs, static_cast<acc_t>(c / zs), nullptr, static_cast<acc_t>(c * p_tail), g_row, V);
        for (int64_t k = 0; k < K; ++k) {
          const double q = static_cast<double>(bs[idx[k]]) / zs;
          g_row[idx[k]] = static_cast<scalar_t>(c * (q - std::exp(y[k] - mt - log_zt)));
        }
      }
    }
  });
}

// The reduction, done here in plain loops (no dispatcher round trips for a few hundred
// numbers): the factor the gradient is scaled by, and the reduced loss.
double cpu_reduction_scale(const KdKlArgs& a, const int64_t* len, const float* w) {
  switch (a.reduction) {
    case Reduction::None:
    case Reduction::Sum:
      return 1.0;
    case Reduction::BatchMean:
      return 1.0 / static_cast<double>(std::max<int64_t>(a.B, 1));
    case Reduction::Mean:
      break;
  }
  double denom = 0;
  for (int64_t b = 0; b < a.B; ++b) {
    const int64_t n = len ? std::clamp<int64_t>(len[b], 0, a.T) : a.T;
    if (!w) {
      denom += static_cast<double>(n);
    } else {
      for (int64_t t = 0; t < n; ++t) denom += w[b * a.T + t];
    }
  }
  return denom != 0 ? 1.0 / denom : 0.0;  // all-masked: loss 0 and gradient 0, never NaN
}

at::Tensor cpu_reduce(const KdKlArgs& a, const at::Tensor& per_frame, double scale) {
  if (a.reduction == Reduction::None) return per_frame;
  double total = 0;  // fixed order, double accumulation: deterministic whatever the thread count
  AT_DISPATCH_FLOATING_TYPES(per_frame.scalar_type(), "kd_kl_reduce_cpu", [&] {
    const scalar_t* p = per_frame.const_data_ptr<scalar_t>();
    for (int64_t i = 0; i < per_frame.numel(); ++i) total += static_cast<double>(p[i]);
  });
  return at::scalar_tensor(total * scale, per_frame.options());
}

// Ask for transparent huge pages on a large fresh output: first-touch page faults on a
// 128 MB gradient otherwise cost more than the kernel itself (a hint; harmless if refused).
void advise_huge_pages(const at::Tensor& t) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t(2) << 20;
  const size_t bytes = t.nbytes();
  if (bytes < 4 * kHuge) return;
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(t.data_ptr()) + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t end = (reinterpret_cast<uintptr_t>(t.data_ptr()) + bytes) & ~(kHuge - 1);
  if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
#endif
}

const int64_t* lengths_ptr(const std::optional<at::Tensor>& lengths, at::Tensor& holder) {
  if (!lengths.has_value()) return nullptr;
  holder = lengths->contiguous();
  return holder.const_data_ptr<int64_t>();
}

const float* weights_ptr(const std::optional<at::Tensor>& weights) {
  return weights.has_value() ? weights->const_data_ptr<float>() : nullptr;
}

// Python checks these too, but not under torch.compile nor for a direct op call. A length outside
// [0, T] or a negative weight ([1, -1] sums to 0) would give a meaningless loss and mean; padded
// frames' weights are never read. B·T comparisons: nothing next to the B·T·V kernel.
void check_lengths_and_weights(const KdKlArgs& a, const int64_t* len, const float* w) {
  for (int64_t b = 0; b < a.B; ++b) {
    const int64_t n = len ? len[b] : a.T;
    TORCH_CHECK_VALUE(n >= 0 && n <= a.T, "asrkd: lengths must lie in [0, T=", a.T, "], got ", n, " at index ", b);
    for (int64_t t = 0; w && t < n; ++t) {
      const float x = w[b * a.T + t];
      TORCH_CHECK_VALUE(std::isfinite(x) && x >= 0.f, "asrkd: weights must be finite and >= 0 on valid frames, got ",
                        x, " at frame (", b, ", ", t, ")");
    }
  }
}

std::tuple<at::Tensor, at::Tensor> kd_kl_div_fwd_cpu(const at::Tensor& student, const at::Tensor& teacher,
                                                     const std::optional<at::Tensor>& lengths,
                                                     const std::optional<at::Tensor>& weights, double temperature,
                                                     c10::string_view reduction, bool compute_grad) {
  const KdKlArgs a = check_dense_args(student, teacher, lengths, weights, temperature, reduction, compute_grad);
  auto [loss, grad] = allocate_outputs(student, a);
  at::Tensor len_holder;
  const int64_t* len = lengths_ptr(lengths, len_holder);
  const float* w = weights_ptr(weights);
  check_lengths_and_weights(a, len, w);
  const double grad_scale = cpu_reduction_scale(a, len, w);
  if (a.B * a.T == 0) return {cpu_reduce(a, loss, grad_scale), grad};
  if (a.compute_grad) advise_huge_pages(grad);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, student.scalar_type(), "kd_kl_div_cpu_student", [&] {
    using student_t = scalar_t;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, teacher.scalar_type(), "kd_kl_div_cpu_teacher", [&] {
      dense_kernel<student_t, scalar_t>(student, teacher, len, w, grad_scale, a, loss, grad);
    });
  });
  return {cpu_reduce(a, loss, grad_scale), grad};
}

std::tuple<at::Tensor, at::Tensor> kd_kl_div_topk_fwd_cpu(const at::Tensor& student, const at::Tensor& topk_idx,
                                                          const at::Tensor& topk_logprob,
                                                          const std::optional<at::Tensor>& lengths,
                                                          const std::optional<at::Tensor>& weights,
                                                          double temperature, c10::string_view reduction,
                                                          bool compute_grad) {
  const KdKlArgs a =
      check_topk_args(student, topk_idx, topk_logprob, lengths, weights, temperature, reduction, compute_grad);
  auto [loss, grad] = allocate_outputs(student, a);
  at::Tensor len_holder;
  const int64_t* len = lengths_ptr(lengths, len_holder);
  const float* w = weights_ptr(weights);
  check_lengths_and_weights(a, len, w);
  const double grad_scale = cpu_reduction_scale(a, len, w);
  if (a.B * a.T == 0) return {cpu_reduce(a, loss, grad_scale), grad};
  if (a.compute_grad) advise_huge_pages(grad);
  // The K-sized teacher tensors are tiny next to (B, T, V): normalise their dtypes here.
  const auto lp_dtype = student.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const at::Tensor idx = topk_idx.to(at::kLong).contiguous();
  const at::Tensor lp = topk_logprob.to(lp_dtype).contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, student.scalar_type(), "kd_kl_div_topk_cpu", [&] {
    topk_kernel<scalar_t>(student, idx, lp, len, w, grad_scale, a, loss, grad);
  });
  return {cpu_reduce(a, loss, grad_scale), grad};
}

// grad *= scale, in place. The forward already applied the reduction's factor, so the
// common case (loss.backward() on the KD loss itself) has scale == 1 and costs nothing.
void kd_kl_scale_grad_cpu(at::Tensor& grad, const at::Tensor& scale) {
  if (grad.numel() == 0) return;
  TORCH_CHECK(grad.dim() == 3 && grad.is_contiguous(), "asrkd: grad must be a contiguous (B, T, V) tensor");
  const int64_t rows = grad.size(0) * grad.size(1), V = grad.size(2);
  if (scale.dim() == 0) {
    const double s = scale.item<double>();
    if (s == 1.0) return;
    grad.mul_(s);
    return;
  }
  TORCH_CHECK(scale.numel() == rows, "asrkd: scale must be a scalar or (B, T), got ", scale.sizes());
  const at::Tensor sc = scale.to(at::kDouble).contiguous();
  const double* sp = sc.const_data_ptr<double>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "kd_kl_scale_grad_cpu", [&] {
    scalar_t* g = grad.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, rows, grain_rows(V), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        using acc_t = acc_of<scalar_t>;
        using Vec = Vectorized<scalar_t>;
        scalar_t* row = g + r * V;
        const acc_t f = static_cast<acc_t>(sp[r]);
        if (f == acc_t(1)) continue;
        int64_t i = 0;
        if constexpr (std::is_same_v<scalar_t, acc_t>) {
          const Vec vf(f);
          for (; i + Vec::size() <= V; i += Vec::size()) (Vec::loadu(row + i) * vf).store(row + i);
        }
        for (; i < V; ++i) row[i] = static_cast<scalar_t>(static_cast<acc_t>(row[i]) * f);
      }
    });
  });
}

}  // namespace
}  // namespace cpu
}  // namespace asrkd

TORCH_LIBRARY_IMPL(asrkd, CPU, m) {
  m.impl("kd_kl_div_fwd", &asrkd::cpu::kd_kl_div_fwd_cpu);
  m.impl("kd_kl_div_topk_fwd", &asrkd::cpu::kd_kl_div_topk_fwd_cpu);
  m.impl("kd_kl_scale_grad_", &asrkd::cpu::kd_kl_scale_grad_cpu);
}
