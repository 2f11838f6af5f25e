// CUDA kernels of the fused KD ops.
//
// A frame (row of V logits) is handled by a group of G threads that keeps the whole row
// in registers (ITEMS values per thread), so student and teacher are read from global
// memory once and the gradient written once:
//   * V <= 512: G <= 32, several frames per warp (character CTC vocabularies: V ~ 30);
//   * V <= 8192: one frame per block of G = 128..512 threads;
//   * larger V: a block per frame sweeping global memory three times (L2-resident rows).
// Loads and stores are 16-byte vectors when every row is aligned. All reductions are
// fixed-order shuffles plus a fixed-order pass over shared memory: results are
// deterministic, no float atomics. Nothing synchronises with the host; kernels run on
// the current stream. The reduction's factor (e.g. 1 / Σ valid weights) is read from
// device memory.
#include "kd_kl.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>
#include <limits>
#include <type_traits>

namespace asrkd {
namespace cuda {
namespace {

constexpr int kWarp = 32;
constexpr int kMinBlock = 128;

template <typename T>
struct AccOf {
  using type = float;
};
template <>
struct AccOf<double> {
  using type = double;
};

template <typename T>
__device__ __forceinline__ T neg_inf() {
  return -std::numeric_limits<T>::infinity();
}

__device__ __forceinline__ float fast_exp(float x) { return __expf(x); }
__device__ __forceinline__ double fast_exp(double x) { return exp(x); }

__device__ __forceinline__ float nan_max(float a, float b) { return (b > a || isnan(b)) ? b : a; }
__device__ __forceinline__ double nan_max(double a, double b) { return (b > a || isnan(b)) ? b : a; }

// N consecutive elements of T loaded/stored as one aligned pack (16 bytes for the student).
template <typename T, int N>
struct alignas(sizeof(T) * N) Pack {
  T v[N];
};

template <typename T, int N, typename acc_t>
__device__ __forceinline__ void load_pack(const T* p, acc_t* out) {
  const Pack<T, N> pk = *reinterpret_cast<const Pack<T, N>*>(p);
#pragma unroll
  for (int j = 0; j < N; ++j) out[j] = static_cast<acc_t>(pk.v[j]);
}

template <typename T, int N, typename acc_t>
__device__ __forceinline__ void store_pack(T* p, const acc_t* in) {
  Pack<T, N> pk;
#pragma unroll
  for (int j = 0; j < N; ++j) pk.v[j] = static_cast<T>(in[j]);
  *reinterpret_cast<Pack<T, N>*>(p) = pk;
}

// --- group reductions -------------------------------------------------------------------
// G <= 32: the group is G adjacent lanes of a warp (xor shuffles stay inside it).
// G > 32: the group is the whole block; warps reduce, then every thread folds the per-warp
// partials from shared memory in the same fixed order.

template <int G>
__device__ __forceinline__ unsigned group_mask() {
  if constexpr (G >= kWarp) {
    return 0xffffffffu;
  } else {
    const unsigned lane = threadIdx.x % kWarp;
    return ((1u << G) - 1u) << (lane / G * G);
  }
}

struct SumOp {
  template <typename T>
  __device__ __forceinline__ T operator()(T a, T b) const { return a + b; }
};
struct MaxOp {
  template <typename T>
  __device__ __forceinline__ T operator()(T a, T b) const { return nan_max(a, b); }
};

template <int G, int N, typename acc_t, typename Op>
__device__ __forceinline__ void group_reduce(acc_t (&v)[N], acc_t* smem, Op op) {
  constexpr int WIDTH = G < kWarp ? G : kWarp;
  const unsigned mask = group_mask<G>();
#pragma unroll
  for (int off = WIDTH / 2; off > 0; off /= 2) {
#pragma unroll
    for (int i = 0; i < N; ++i) v[i] = op(v[i], __shfl_xor_sync(mask, v[i], off, WIDTH));
  }
  if constexpr (G > kWarp) {
    constexpr int NW = G / kWarp;
    const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
    __syncthreads();  // smem may still be read by a previous reduction
    if (lane == 0) {
#pragma unroll
      for (int i = 0; i < N; ++i) smem[i * NW + warp] = v[i];
    }
    __syncthreads();
#pragma unroll
    for (int i = 0; i < N; ++i) {
      acc_t r = smem[i * NW];
      for (int w = 1; w < NW; ++w) r = op(r, smem[i * NW + w]);
      v[i] = r;
    }
  }
}

template <int G>
__device__ __forceinline__ void group_sync() {
  if constexpr (G > kWarp) {
    __syncthreads();
  } else {
    __syncwarp(group_mask<G>());
  }
}

// --- parameters ---------------------------------------------------------------------------

template <typename scalar_t, typename teacher_t, typename acc_t>
struct DenseParams {
  const scalar_t* s;
  const teacher_t* t;
  int64_t s_sb, s_st, t_sb, t_st;
  const int64_t* len;  // (B,) or nullptr
  const float* w;      // (B, T) or nullptr
  acc_t* loss;         // (B, T) per-frame
  scalar_t* grad;      // (B, T, V) or nullptr
  const acc_t* scale;  // reduction factor, device scalar
  int64_t B, T, V;
  acc_t temp, inv_t;
  bool vec_ok;  // every row of s, t (and grad) is aligned for pack loads
};

template <typename scalar_t, typename acc_t>
struct TopkParams {
  const scalar_t* s;
  int64_t s_sb, s_st;
  const int64_t* idx;  // (B, T, K)
  const acc_t* lp;     // (B, T, K)
  const int64_t* len;
  const float* w;
  acc_t* loss;
  scalar_t* grad;
  const acc_t* scale;
  int64_t B, T, V, K;
  acc_t temp, inv_t;
  bool vec_ok;
};

struct Frame {
  int64_t row, b, t;
  bool skip;
  float w;
};

__device__ __forceinline__ Frame frame_of(int64_t row, int64_t B, int64_t T, const int64_t* len, const float* w) {
  Frame f{row, 0, 0, true, 0.f};
  if (row >= B * T) return f;
  f.b = row / T;
  f.t = row % T;
  // As the CPU kernel refuses them (Python checks too, but not under torch.compile nor for a direct
  // op call): a length outside [0, T], a negative or non-finite weight on a valid frame.
  CUDA_KERNEL_ASSERT(!len || (len[f.b] >= 0 && len[f.b] <= T));
  const bool valid = !len || f.t < len[f.b];
  f.w = (valid && w) ? w[row] : 1.f;
  CUDA_KERNEL_ASSERT(f.w >= 0.f && isfinite(f.w));
  f.skip = !valid || f.w == 0.f;
  return f;
}

// Row of V values into registers: x[c * VEC + j] holds element (c * G + lane) * VEC + j.
template <typename T, int G, int ITEMS, int VEC, typename acc_t>
__device__ __forceinline__ void load_row(const T* row, int64_t V, bool vec_ok, int lane, acc_t (&x)[ITEMS]) {
#pragma unroll
  for (int c = 0; c < ITEMS / VEC; ++c) {
    const int64_t base = (static_cast<int64_t>(c) * G + lane) * VEC;
    if (vec_ok && base + VEC <= V) {
      load_pack<T, VEC>(row + base, &x[c * VEC]);
    } else {
#pragma unroll
      for (int j = 0; j < VEC; ++j) x[c * VEC + j] = base + j < V ? static_cast<acc_t>(row[base + j]) : neg_inf<acc_t>();
    }
  }
}

template <typename T, int G, int ITEMS, int VEC, typename acc_t>
__device__ __forceinline__ void store_row(T* row, int64_t V, bool vec_ok, int lane, const acc_t (&x)[ITEMS]) {
#pragma unroll
  for (int c = 0; c < ITEMS / VEC; ++c) {
    const int64_t base = (static_cast<int64_t>(c) * G + lane) * VEC;
    if (vec_ok && base + VEC <= V) {
      store_pack<T, VEC>(row + base, &x[c * VEC]);
    } else {
#pragma unroll
      for (int j = 0; j < VEC; ++j)
        if (base + j < V) row[base + j] = static_cast<T>(x[c * VEC + j]);
    }
  }
}

template <typename T, int G, int ITEMS, int VEC>
__device__ __forceinline__ void fill_row(T* row, int64_t V, bool vec_ok, int lane, float value) {
  float x[ITEMS];
#pragma unroll
  for (int i = 0; i < ITEMS; ++i) x[i] = value;
  store_row<T, G, ITEMS, VEC>(row, V, vec_ok, lane, x);
}

template <int G>
constexpr int block_threads() {
  return G > kMinBlock ? G : kMinBlock;
}

template <typename scalar_t>
constexpr int vec_of() {
  return 16 / static_cast<int>(sizeof(scalar_t));
}

// --- dense kernel, row in registers --------------------------------------------------------

template <typename scalar_t, typename teacher_t, typename acc_t, int G, int ITEMS>
__global__ void __launch_bounds__(block_threads<G>())
    dense_rows_kernel(const DenseParams<scalar_t, teacher_t, acc_t> p) {
  constexpr int VEC = vec_of<scalar_t>();
  static_assert(G <= kWarp || block_threads<G>() == G, "group_reduce takes a group wider than a warp to be the whole block");
  static_assert(ITEMS % VEC == 0, "ITEMS must be a multiple of the pack size");
  constexpr int ROWS = block_threads<G>() / G;
  __shared__ acc_t smem[3 * (G > kWarp ? G / kWarp : 1)];
  const int lane = threadIdx.x % G;
  const Frame f = frame_of(static_cast<int64_t>(blockIdx.x) * ROWS + threadIdx.x / G, p.B, p.T, p.len, p.w);
  if (f.row >= p.B * p.T) return;  // whole groups only: uniform within a group
  scalar_t* g_row = p.grad ? p.grad + f.row * p.V : nullptr;
  if (f.skip) {
    if (lane == 0) p.loss[f.row] = 0;
    if (g_row) fill_row<scalar_t, G, ITEMS, VEC>(g_row, p.V, p.vec_ok, lane, 0.f);
    return;
  }
  acc_t xs[ITEMS], xt[ITEMS];
  load_row<scalar_t, G, ITEMS, VEC>(p.s + f.b * p.s_sb + f.t * p.s_st, p.V, p.vec_ok, lane, xs);
  load_row<teacher_t, G, ITEMS, VEC>(p.t + f.b * p.t_sb + f.t * p.t_st, p.V, p.vec_ok, lane, xt);
  acc_t m[2] = {neg_inf<acc_t>(), neg_inf<acc_t>()};
#pragma unroll
  for (int i = 0; i < ITEMS; ++i) {
    xs[i] *= p.inv_t;
    xt[i] *= p.inv_t;
    m[0] = nan_max(m[0], xs[i]);
    m[1] = nan_max(m[1], xt[i]);
  }
  group_reduce<G>(m, smem, MaxOp{});
  if (!isfinite(m[0]) || !isfinite(m[1])) {  // NaN/+inf input or an all -inf row
    const acc_t nan = std::numeric_limits<acc_t>::quiet_NaN();
    if (lane == 0) p.loss[f.row] = nan;
    if (g_row) fill_row<scalar_t, G, ITEMS, VEC>(g_row, p.V, p.vec_ok, lane, nan);
    return;
  }
  acc_t z[3] = {0, 0, 0};  // Σ e_s, Σ e_t, Σ e_t (x_t - x_s)
#pragma unroll
  for (int i = 0; i < ITEMS; ++i) {
    const acc_t cs = xs[i] - m[0], ct = xt[i] - m[1];
    xs[i] = fast_exp(cs);
    xt[i] = fast_exp(ct);
    z[0] += xs[i];
    z[1] += xt[i];
    if (xt[i] > acc_t(0)) z[2] += xt[i] * (ct - cs);  // 0·log 0 = 0
  }
  group_reduce<G>(z, smem, SumOp{});
  if (lane == 0) p.loss[f.row] = static_cast<acc_t>(f.w) * p.temp * p.temp * (z[2] / z[1] - log(z[1]) + log(z[0]));
  if (g_row) {
    const acc_t c = static_cast<acc_t>(f.w) * p.temp * *p.scale;
    const acc_t cs = c / z[0], ct = c / z[1];
#pragma unroll
    for (int i = 0; i < ITEMS; ++i) xs[i] = xs[i] * cs - xt[i] * ct;
    store_row<scalar_t, G, ITEMS, VEC>(g_row, p.V, p.vec_ok, lane, xs);
  }
}

// --- dense kernel for very large V: a block per row, sweeps over global memory ----------

constexpr int kLoopThreads = 512;

template <typename scalar_t, typename teacher_t, typename acc_t>
__global__ void __launch_bounds__(kLoopThreads) dense_looped_kernel(const DenseParams<scalar_t, teacher_t, acc_t> p) {
  constexpr int G = kLoopThreads;
  __shared__ acc_t smem[3 * (G / kWarp)];
  const int lane = threadIdx.x;
  const Frame f = frame_of(blockIdx.x, p.B, p.T, p.len, p.w);
  scalar_t* g_row = p.grad ? p.grad + f.row * p.V : nullptr;
  if (f.skip) {
    if (lane == 0) p.loss[f.row] = 0;
    if (g_row)
      for (int64_t i = lane; i < p.V; i += G) g_row[i] = static_cast<scalar_t>(0.f);
    return;
  }
  const scalar_t* s = p.s + f.b * p.s_sb + f.t * p.s_st;
  const teacher_t* t = p.t + f.b * p.t_sb + f.t * p.t_st;
  acc_t m[2] = {neg_inf<acc_t>(), neg_inf<acc_t>()};
  for (int64_t i = lane; i < p.V; i += G) {
    m[0] = nan_max(m[0], static_cast<acc_t>(s[i]) * p.inv_t);
    m[1] = nan_max(m[1], static_cast<acc_t>(t[i]) * p.inv_t);
  }
  group_reduce<G>(m, smem, MaxOp{});
  if (!isfinite(m[0]) || !isfinite(m[1])) {
    const acc_t nan = std::numeric_limits<acc_t>::quiet_NaN();
    if (lane == 0) p.loss[f.row] = nan;
    if (g_row)
      for (int64_t i = lane; i < p.V; i += G) g_row[i] = static_cast<scalar_t>(nan);
    return;
  }
  acc_t z[3] = {0, 0, 0};
  for (int64_t i = lane; i < p.V; i += G) {
    const acc_t cs = static_cast<acc_t>(s[i]) * p.inv_t - m[0], ct = static_cast<acc_t>(t[i]) * p.inv_t - m[1];
    const acc_t es = fast_exp(cs), et = fast_exp(ct);
    z[0] += es;
    z[1] += et;
    if (et > acc_t(0)) z[2] += et * (ct - cs);
  }
  group_reduce<G>(z, smem, SumOp{});
  if (lane == 0) p.loss[f.row] = static_cast<acc_t>(f.w) * p.temp * p.temp * (z[2] / z[1] - log(z[1]) + log(z[0]));
  if (g_row) {
    const acc_t c = static_cast<acc_t>(f.w) * p.temp * *p.scale;
    const acc_t cs = c / z[0], ct = c / z[1];
    for (int64_t i = lane; i < p.V; i += G) {
      const acc_t es = fast_exp(static_cast<acc_t>(s[i]) * p.inv_t - m[0]);
      const acc_t et = fast_exp(static_cast<acc_t>(t[i]) * p.inv_t - m[1]);
      g_row[i] = static_cast<scalar_t>(es * cs - et * ct);
    }
  }
}

// --- top-k kernel -----------------------------------------------------------------------------
// Teacher = K stored log-probs (temperature 1) + the leftover mass spread evenly over V - K
// tokens, then tempered. The student row is held in registers as in the dense kernel.

template <typename scalar_t, typename acc_t, int G, int ITEMS>
__global__ void __launch_bounds__(block_threads<G>()) topk_rows_kernel(const TopkParams<scalar_t, acc_t> p) {
  constexpr int VEC = vec_of<scalar_t>();
  static_assert(G <= kWarp || block_threads<G>() == G, "group_reduce takes a group wider than a warp to be the whole block");
  constexpr int ROWS = block_threads<G>() / G;
  // A bit per token of the frame (V <= G * ITEMS): top-k ids seen, for the distinct-ids check.
  constexpr int SEEN_WORDS = (G * ITEMS + 31) / 32;
  __shared__ acc_t smem[3 * (G > kWarp ? G / kWarp : 1)];
  __shared__ unsigned seen_all[ROWS * SEEN_WORDS];
  const int lane = threadIdx.x % G;
  const Frame f = frame_of(static_cast<int64_t>(blockIdx.x) * ROWS + threadIdx.x / G, p.B, p.T, p.len, p.w);
  if (f.row >= p.B * p.T) return;
  scalar_t* g_row = p.grad ? p.grad + f.row * p.V : nullptr;
  if (f.skip) {
    if (lane == 0) p.loss[f.row] = 0;
    if (g_row) fill_row<scalar_t, G, ITEMS, VEC>(g_row, p.V, p.vec_ok, lane, 0.f);
    return;
  }
  unsigned* seen = seen_all + (threadIdx.x / G) * SEEN_WORDS;
  for (int i = lane; i < SEEN_WORDS; i += G) seen[i] = 0u;
  const scalar_t* s_row = p.s + f.b * p.s_sb + f.t * p.s_st;
  const int64_t* idx = p.idx + f.row * p.K;
  const acc_t* lp = p.lp + f.row * p.K;
  const int64_t n_tail = p.V - p.K;

  acc_t xs[ITEMS];
  load_row<scalar_t, G, ITEMS, VEC>(s_row, p.V, p.vec_ok, lane, xs);
  // m[0]: student max, m[1]: max tempered teacher log-prob over the top-k; mass: Σ p_k (T=1)
  acc_t m[2] = {neg_inf<acc_t>(), neg_inf<acc_t>()};
  acc_t mass[1] = {0};
#pragma unroll
  for (int i = 0; i < ITEMS; ++i) {
    xs[i] *= p.inv_t;
    m[0] = nan_max(m[0], xs[i]);
  }
  group_sync<G>();  // the bitmap is cleared before any id is marked
  for (int64_t k = lane; k < p.K; k += G) {
    // Python validates the ids, but not under torch.compile nor for a direct op call: an id
    // out of range would write outside the gradient, so it stops the kernel (like an index_select).
    CUDA_KERNEL_ASSERT(idx[k] >= 0 && idx[k] < p.V);
    // Distinct ids (Python no longer sorts them): of two equal ids, whichever marks second sees
    // the bit set, in any order; one shared-memory atomic per id.
    const unsigned bit = 1u << (idx[k] % 32);
    CUDA_KERNEL_ASSERT(!(atomicOr(&seen[idx[k] / 32], bit) & bit));
    // As the CPU kernel refuses it: a log-prob above 0 (NaN passes and gives a NaN frame).
    CUDA_KERNEL_ASSERT(!(lp[k] > static_cast<acc_t>(kTopkLogprobTol)));
    m[1] = nan_max(m[1], lp[k] * p.inv_t);
    mass[0] += exp(lp[k]);
  }
  group_reduce<G>(m, smem, MaxOp{});
  group_reduce<G>(mass, smem, SumOp{});
  CUDA_KERNEL_ASSERT(!(mass[0] > acc_t(1) + static_cast<acc_t>(kTopkMassTol)));  // a mass above 1
  const acc_t rest = mass[0] < acc_t(1) ? acc_t(1) - mass[0] : acc_t(0);
  const acc_t y_tail = (n_tail > 0 && rest > 0) ? (log(rest) - log(static_cast<acc_t>(n_tail))) * p.inv_t : neg_inf<acc_t>();
  const acc_t mt = nan_max(m[1], y_tail);
  if (!isfinite(m[0]) || !isfinite(mt)) {
    const acc_t nan = std::numeric_limits<acc_t>::quiet_NaN();
    if (lane == 0) p.loss[f.row] = nan;
    if (g_row) fill_row<scalar_t, G, ITEMS, VEC>(g_row, p.V, p.vec_ok, lane, nan);
    return;
  }
  // z[0] = Σ e_s, z[1] = Σ_k e_t (top-k part of the teacher normaliser), z[2] = Σ centred student logits
  acc_t z[3] = {0, 0, 0};
#pragma unroll
  for (int c = 0; c < ITEMS / VEC; ++c) {
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      const int i = c * VEC + j;
      const acc_t cs = xs[i] - m[0];
      xs[i] = fast_exp(cs);
      z[0] += xs[i];
      if ((static_cast<int64_t>(c) * G + lane) * VEC + j < p.V) z[2] += cs;  // skip the -inf padding
    }
  }
  for (int64_t k = lane; k < p.K; k += G) z[1] += exp(lp[k] * p.inv_t - mt);
  group_reduce<G>(z, smem, SumOp{});
  const double zt = static_cast<double>(z[1]) + (n_tail > 0 ? double(n_tail) * exp(static_cast<double>(y_tail - mt)) : 0.0);
  const double log_zt = log(zt), log_zs = log(static_cast<double>(z[0]));
  const double log_p_tail = static_cast<double>(y_tail - mt) - log_zt;
  const double p_tail = exp(log_p_tail);
  // Top-k terms: Σ p_k (log p_k - log q_k) and Σ log q_k (for the tail remainder).
  acc_t kt[2] = {0, 0};
  for (int64_t k = lane; k < p.K; k += G) {
    const double log_q = (static_cast<double>(s_row[idx[k]]) * p.inv_t - m[0]) - log_zs;
    const double log_p = static_cast<double>(lp[k] * p.inv_t - mt) - log_zt;
    kt[1] += static_cast<acc_t>(log_q);
    if (isfinite(log_p)) kt[0] += static_cast<acc_t>(exp(log_p) * (log_p - log_q));
  }
  group_reduce<G>(kt, smem, SumOp{});
  if (lane == 0) {
    double kl = kt[0];
    const double sum_log_q = static_cast<double>(z[2]) - double(p.V) * log_zs;
    if (p_tail > 0) kl += p_tail * (double(n_tail) * log_p_tail - (sum_log_q - static_cast<double>(kt[1])));
    p.loss[f.row] = static_cast<acc_t>(static_cast<double>(f.w) * p.temp * p.temp * kl);
  }
  if (g_row) {
    const acc_t c = static_cast<acc_t>(f.w) * p.temp * *p.scale;
    const acc_t cs = c / z[0], ct = static_cast<acc_t>(c * p_tail);
#pragma unroll
    for (int i = 0; i < ITEMS; ++i) xs[i] = xs[i] * cs - ct;
    store_row<scalar_t, G, ITEMS, VEC>(g_row, p.V, p.vec_ok, lane, xs);
    group_sync<G>();  // the dense writes above land before the top-k entries are overwritten
    for (int64_t k = lane; k < p.K; k += G) {
      const acc_t q = fast_exp(static_cast<acc_t>(s_row[idx[k]]) * p.inv_t - m[0]) / z[0];
      const acc_t pk = static_cast<acc_t>(exp(static_cast<double>(lp[k] * p.inv_t - mt) - log_zt));
      g_row[idx[k]] = static_cast<scalar_t>(c * (q - pk));
    }
  }
}

// --- in-place gradient scaling ------------------------------------------------------------

template <typename scalar_t, typename acc_t>
__global__ void scale_grad_kernel(scalar_t* g, int64_t n, int64_t V, const acc_t* scale, bool per_row) {
  constexpr int VEC = vec_of<scalar_t>();
  if (!per_row && *scale == acc_t(1)) return;  // the common case: nothing to do
  // a contiguous view may start anywhere in its storage: pack loads only from an aligned start
  const int64_t n_packs = reinterpret_cast<uintptr_t>(g) % (sizeof(scalar_t) * VEC) == 0 ? n / VEC : 0;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n_packs; i += stride) {
    acc_t x[VEC];
    load_pack<scalar_t, VEC>(g + i * VEC, x);
#pragma unroll
    for (int j = 0; j < VEC; ++j) x[j] *= per_row ? scale[(i * VEC + j) / V] : *scale;
    store_pack<scalar_t, VEC>(g + i * VEC, x);
  }
  for (int64_t i = n_packs * VEC + static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    g[i] = static_cast<scalar_t>(static_cast<acc_t>(g[i]) * (per_row ? scale[i / V] : *scale));
  }
}

// --- host side --------------------------------------------------------------------------------

bool aligned(const void* ptr, int64_t bytes) { return reinterpret_cast<uintptr_t>(ptr) % bytes == 0; }

template <typename T, int VEC>
bool rows_aligned(const at::Tensor& x) {
  constexpr int64_t bytes = sizeof(T) * VEC;
  return aligned(x.const_data_ptr(), bytes) && (x.stride(0) * static_cast<int64_t>(sizeof(T))) % bytes == 0 &&
         (x.stride(1) * static_cast<int64_t>(sizeof(T))) % bytes == 0 && (x.size(2) * static_cast<int64_t>(sizeof(T))) % bytes == 0;
}

int64_t blocks_for(int64_t rows, int rows_per_block) { return (rows + rows_per_block - 1) / rows_per_block; }

// Calls fn(std::integral_constant<int, G>, std::integral_constant<int, ITEMS>) for the
// configuration that holds V in registers, or returns false when V is too large.
template <int VEC, typename Fn>
bool with_row_config(int64_t V, Fn&& fn) {
  using std::integral_constant;
  if constexpr (VEC == 8) {  // 16-bit types: 8 per 16-byte pack
    if (V <= 32) return fn(integral_constant<int, 4>{}, integral_constant<int, 8>{}), true;
    if (V <= 64) return fn(integral_constant<int, 8>{}, integral_constant<int, 8>{}), true;
    if (V <= 128) return fn(integral_constant<int, 16>{}, integral_constant<int, 8>{}), true;
    if (V <= 256) return fn(integral_constant<int, 32>{}, integral_constant<int, 8>{}), true;
    if (V <= 512) return fn(integral_constant<int, 32>{}, integral_constant<int, 16>{}), true;
  } else {  // fp32 (4 per pack), fp64 (2 per pack)
    if (V <= 32) return fn(integral_constant<int, 8>{}, integral_constant<int, 4>{}), true;
    if (V <= 64) return fn(integral_constant<int, 16>{}, integral_constant<int, 4>{}), true;
    if (V <= 128) return fn(integral_constant<int, 32>{}, integral_constant<int, 4>{}), true;
    if (V <= 256) return fn(integral_constant<int, 32>{}, integral_constant<int, 8>{}), true;
    if (V <= 512) return fn(integral_constant<int, 32>{}, integral_constant<int, 16>{}), true;
  }
  if (V <= 1024) return fn(integral_constant<int, 128>{}, integral_constant<int, 8>{}), true;
  if (V <= 2048) return fn(integral_constant<int, 256>{}, integral_constant<int, 8>{}), true;
  if (V <= 4096) return fn(integral_constant<int, 512>{}, integral_constant<int, 8>{}), true;
  if (V <= 8192) return fn(integral_constant<int, 512>{}, integral_constant<int, 16>{}), true;
  return false;
}

template <typename scalar_t, typename teacher_t>
void launch_dense(const at::Tensor& student, const at::Tensor& teacher, const int64_t* len, const float* w,
                  const at::Tensor& scale, const KdKlArgs& a, at::Tensor& loss, at::Tensor& grad) {
  using acc_t = typename AccOf<scalar_t>::type;
  constexpr int VEC = vec_of<scalar_t>();
  DenseParams<scalar_t, teacher_t, acc_t> p;
  p.s = student.const_data_ptr<scalar_t>();
  p.t = teacher.const_data_ptr<teacher_t>();
  p.s_sb = student.stride(0);
  p.s_st = student.stride(1);
  p.t_sb = teacher.stride(0);
  p.t_st = teacher.stride(1);
  p.len = len;
  p.w = w;
  p.loss = loss.mutable_data_ptr<acc_t>();
  p.grad = a.compute_grad ? grad.mutable_data_ptr<scalar_t>() : nullptr;
  p.scale = scale.const_data_ptr<acc_t>();
  p.B = a.B;
  p.T = a.T;
  p.V = a.V;
  p.temp = static_cast<acc_t>(a.temperature);
  p.inv_t = static_cast<acc_t>(1.0 / a.temperature);
  p.vec_ok = rows_aligned<scalar_t, VEC>(student) && rows_aligned<teacher_t, VEC>(teacher) &&
             (!p.grad || aligned(p.grad, sizeof(scalar_t) * VEC));
  const int64_t rows = a.B * a.T;
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const bool fits = with_row_config<VEC>(a.V, [&](auto g, auto items) {
    constexpr int G = decltype(g)::value, ITEMS = decltype(items)::value;
    constexpr int threads = block_threads<G>();
    dense_rows_kernel<scalar_t, teacher_t, acc_t, G, ITEMS>
        <<<blocks_for(rows, threads / G), threads, 0, stream>>>(p);
  });
  if (!fits) dense_looped_kernel<scalar_t, teacher_t, acc_t><<<rows, kLoopThreads, 0, stream>>>(p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename scalar_t>
void launch_topk(const at::Tensor& student, const at::Tensor& idx, const at::Tensor& lp, const int64_t* len,
                 const float* w, const at::Tensor& scale, const KdKlArgs& a, at::Tensor& loss, at::Tensor& grad) {
  using acc_t = typename AccOf<scalar_t>::type;
  constexpr int VEC = vec_of<scalar_t>();
  TopkParams<scalar_t, acc_t> p;
  p.s = student.const_data_ptr<scalar_t>();
  p.s_sb = student.stride(0);
  p.s_st = student.stride(1);
  p.idx = idx.const_data_ptr<int64_t>();
  p.lp = lp.const_data_ptr<acc_t>();
  p.len = len;
  p.w = w;
  p.loss = loss.mutable_data_ptr<acc_t>();
  p.grad = a.compute_grad ? grad.mutable_data_ptr<scalar_t>() : nullptr;
  p.scale = scale.const_data_ptr<acc_t>();
  p.B = a.B;
  p.T = a.T;
  p.V = a.V;
  p.K = idx.size(2);
  p.temp = static_cast<acc_t>(a.temperature);
  p.inv_t = static_cast<acc_t>(1.0 / a.temperature);
  p.vec_ok = rows_aligned<scalar_t, VEC>(student) && (!p.grad || aligned(p.grad, sizeof(scalar_t) * VEC));
  const int64_t rows = a.B * a.T;
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const bool fits = with_row_config<VEC>(a.V, [&](auto g, auto items) {
    constexpr int G = decltype(g)::value, ITEMS = decltype(items)::value;
    constexpr int threads = block_threads<G>();
    topk_rows_kernel<scalar_t, acc_t, G, ITEMS><<<blocks_for(rows, threads / G), threads, 0, stream>>>(p);
  });
  TORCH_CHECK(fits, "asrkd: kd_kl_div_topk on CUDA supports V <= 8192, got V=", a.V);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// With T = 0 no frame runs, so the kernels' length assert cannot fire: the same check on the device.
void assert_lengths_when_empty(const KdKlArgs& a, const std::optional<at::Tensor>& lengths) {
  if (lengths.has_value() && a.B > 0 && a.T == 0) {
    at::_assert_async((*lengths == 0).all(), "asrkd: lengths must lie in [0, T=0]");
  }
}

const int64_t* lengths_ptr(const std::optional<at::Tensor>& lengths, at::Tensor& holder) {
  if (!lengths.has_value()) return nullptr;
  holder = lengths->contiguous();
  return holder.const_data_ptr<int64_t>();
}

#define ASRKD_DISPATCH_TEACHER(TEACHER_TYPE, NAME, ...)                                             \
  [&] {                                                                                            \
    switch (TEACHER_TYPE) {                                                                        \
      case at::kFloat: { using teacher_t = float; return __VA_ARGS__(); }                         \
      case at::kHalf: { using teacher_t = at::Half; return __VA_ARGS__(); }                       \
      case at::kBFloat16: { using teacher_t = at::BFloat16; return __VA_ARGS__(); }               \
      default: TORCH_CHECK(false, NAME, ": unsupported teacher dtype ", TEACHER_TYPE);             \
    }                                                                                              \
  }()

std::tuple<at::Tensor, at::Tensor> kd_kl_div_fwd_cuda(const at::Tensor& student, const at::Tensor& teacher_in,
                                                      const std::optional<at::Tensor>& lengths,
                                                      const std::optional<at::Tensor>& weights, double temperature,
                                                      c10::string_view reduction, bool compute_grad) {
  const KdKlArgs a = check_dense_args(student, teacher_in, lengths, weights, temperature, reduction, compute_grad);
  const c10::cuda::CUDAGuard guard(student.device());
  // fp64 is for checking; it pairs only with itself (the rare mixed case costs a copy).
  at::Tensor teacher = teacher_in;
  if (student.scalar_type() == at::kDouble && teacher.scalar_type() != at::kDouble) teacher = teacher.to(at::kDouble);
  if (student.scalar_type() != at::kDouble && teacher.scalar_type() == at::kDouble) teacher = teacher.to(at::kFloat);
  auto [loss, grad] = allocate_outputs(student, a);
  const at::Tensor scale = reduction_scale(a, student, lengths, weights);
  assert_lengths_when_empty(a, lengths);
  if (a.B * a.T == 0 || a.V == 0) return {reduce_loss(a, loss, scale), grad};
  at::Tensor len_holder;
  const int64_t* len = lengths_ptr(lengths, len_holder);
  const float* w = weights.has_value() ? weights->const_data_ptr<float>() : nullptr;
  if (student.scalar_type() == at::kDouble) {
    launch_dense<double, double>(student, teacher, len, w, scale, a, loss, grad);
  } else {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, student.scalar_type(), "kd_kl_div_cuda", [&] {
      using student_t = scalar_t;
      if constexpr (!std::is_same_v<student_t, double>) {
        ASRKD_DISPATCH_TEACHER(teacher.scalar_type(), "kd_kl_div_cuda", [&] {
          launch_dense<student_t, teacher_t>(student, teacher, len, w, scale, a, loss, grad);
        });
      }
    });
  }
  return {reduce_loss(a, loss, scale), grad};
}

std::tuple<at::Tensor, at::Tensor> kd_kl_div_topk_fwd_cuda(const at::Tensor& student, const at::Tensor& topk_idx,
                                                           const at::Tensor& topk_logprob,
                                                           const std::optional<at::Tensor>& lengths,
                                                           const std::optional<at::Tensor>& weights,
                                                           double temperature, c10::string_view reduction,
                                                           bool compute_grad) {
  const KdKlArgs a =
      check_topk_args(student, topk_idx, topk_logprob, lengths, weights, temperature, reduction, compute_grad);
  const c10::cuda::CUDAGuard guard(student.device());
  auto [loss, grad] = allocate_outputs(student, a);
  const at::Tensor scale = reduction_scale(a, student, lengths, weights);
  assert_lengths_when_empty(a, lengths);
  if (a.B * a.T == 0) return {reduce_loss(a, loss, scale), grad};
  at::Tensor len_holder;
  const int64_t* len = lengths_ptr(lengths, len_holder);
  const float* w = weights.has_value() ? weights->const_data_ptr<float>() : nullptr;
  const auto lp_dtype = student.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const at::Tensor idx = topk_idx.to(at::kLong).contiguous();
  const at::Tensor lp = topk_logprob.to(lp_dtype).contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, student.scalar_type(), "kd_kl_div_topk_cuda", [&] {
    launch_topk<scalar_t>(student, idx, lp, len, w, scale, a, loss, grad);
  });
  return {reduce_loss(a, loss, scale), grad};
}

void kd_kl_scale_grad_cuda(at::Tensor& grad, const at::Tensor& scale) {
  if (grad.numel() == 0) return;
  TORCH_CHECK(grad.dim() == 3 && grad.is_contiguous(), "asrkd: grad must be a contiguous (B, T, V) tensor");
  const bool per_row = scale.dim() != 0;
  TORCH_CHECK(!per_row || scale.numel() == grad.size(0) * grad.size(1),
              "asrkd: scale must be a scalar or (B, T), got ", scale.sizes());
  TORCH_CHECK(scale.device() == grad.device(), "asrkd: scale must be on ", grad.device());
  const c10::cuda::CUDAGuard guard(grad.device());
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const int64_t n = grad.numel(), V = grad.size(2);
  const int threads = 256;
  const int64_t max_blocks = static_cast<int64_t>(at::cuda::getCurrentDeviceProperties()->multiProcessorCount) * 8;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "kd_kl_scale_grad_cuda", [&] {
    using acc_t = typename AccOf<scalar_t>::type;
    const at::Tensor sc = scale.to(std::is_same_v<acc_t, double> ? at::kDouble : at::kFloat).contiguous();
    const int64_t blocks = std::min<int64_t>(max_blocks, (n / vec_of<scalar_t>() + threads - 1) / threads + 1);
    scale_grad_kernel<scalar_t, acc_t>
        <<<blocks, threads, 0, stream>>>(grad.mutable_data_ptr<scalar_t>(), n, V, sc.const_data_ptr<acc_t>(), per_row);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace
}  // namespace cuda
}  // namespace asrkd

TORCH_LIBRARY_IMPL(asrkd, CUDA, m) {
  m.impl("kd_kl_div_fwd", &asrkd::cuda::kd_kl_div_fwd_cuda);
  m.impl("kd_kl_div_topk_fwd", &asrkd::cuda::kd_kl_div_topk_fwd_cuda);
  m.impl("kd_kl_scale_grad_", &asrkd::cuda::kd_kl_scale_grad_cuda);
}
