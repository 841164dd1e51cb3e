// Row-wise softmax kernels: cross-entropy over the vocabulary (one block per token row, online max/sum,
// fp32 in registers only) and the causal scaled softmax of the non-flash attention path.
#include "common.h"

namespace neox {
namespace {

constexpr int64_t kIgnore = -100;
constexpr int kUnroll = 4;  // independent vector loads in flight per thread
constexpr int kItems = 4;   // causal softmax: vectors per thread kept in registers
constexpr int kMaxThreads = 512;

template <typename T, int V>
__global__ void ce_fwd_kernel(const T* __restrict__ logits, const int64_t* __restrict__ targets,
                              float* __restrict__ loss, float* __restrict__ lse_out, int64_t vocab) {
  __shared__ float shm[64];
  const int64_t row = blockIdx.x;
  const int64_t t = targets[row];
  if (t == kIgnore) {  // contributes nothing, forward or backward: skip reading the row
    if (threadIdx.x == 0) loss[row] = lse_out[row] = 0.f;
    return;
  }
  CUDA_KERNEL_ASSERT(t >= 0 && t < vocab);
  const T* lr = logits + row * vocab;
  const int64_t nvec = vocab / V;
  float m = -INFINITY, s = 0.f;
  for (int64_t base = threadIdx.x; base < nvec; base += (int64_t)blockDim.x * kUnroll) {
    float v[kUnroll][V];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t vi = base + (int64_t)u * blockDim.x;
      if (vi < nvec)
        load_vec<T, V>(lr + vi * V, v[u]);
      else
#pragma unroll
        for (int k = 0; k < V; ++k) v[u][k] = -INFINITY;
    }
    float mv = m;
#pragma unroll
    for (int u = 0; u < kUnroll; ++u)
#pragma unroll
      for (int k = 0; k < V; ++k) mv = fmaxf(mv, v[u][k]);
    if (mv == -INFINITY) continue;
    s *= fast_exp(m - mv);
#pragma unroll
    for (int u = 0; u < kUnroll; ++u)
#pragma unroll
      for (int k = 0; k < V; ++k) s += fast_exp(v[u][k] - mv);
    m = mv;
  }
  const float M = block_max(m, shm);
  const float S = block_sum(m == -INFINITY ? 0.f : s * expf(m - M), shm);
  if (threadIdx.x == 0) {
    const float lse = M + logf(S);
    lse_out[row] = lse;
    loss[row] = lse - static_cast<float>(lr[t]);
  }
}

// dlogits = scale * (softmax(logits) - onehot(target)); zero rows for ignored targets.
template <typename T, int V>
__global__ void ce_bwd_kernel(const T* __restrict__ logits, const int64_t* __restrict__ targets,
                              const float* __restrict__ lse, const float* __restrict__ scale,
                              T* __restrict__ dlogits, int64_t vocab) {
  const int64_t row = blockIdx.x;
  const int64_t t = targets[row];
  const int64_t nvec = vocab / V;
  T* dr = dlogits + row * vocab;
  if (t == kIgnore) {
    const float z[V] = {};
    for (int64_t vi = threadIdx.x; vi < nvec; vi += blockDim.x) store_vec<T, V>(dr + vi * V, z);
    return;
  }
  const T* lr = logits + row * vocab;
  const float l = lse[row], sc = *scale;
  for (int64_t base = threadIdx.x; base < nvec; base += (int64_t)blockDim.x * kUnroll) {
    float v[kUnroll][V];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t vi = base + (int64_t)u * blockDim.x;
      if (vi < nvec) load_vec<T, V>(lr + vi * V, v[u]);
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t vi = base + (int64_t)u * blockDim.x;
      if (vi < nvec) {
#pragma unroll
        for (int k = 0; k < V; ++k) v[u][k] = sc * (fast_exp(v[u][k] - l) - (vi * V + k == t ? 1.f : 0.f));
        store_vec<T, V>(dr + vi * V, v[u]);
      }
    }
  }
}

// y_ij = softmax_j<=i(scale * x_ij), 0 above the diagonal. x, y: [rows, S], row i of its matrix = row % S.
template <typename T, int V>
__global__ void __launch_bounds__(kMaxThreads)
    csm_fwd_kernel(const T* __restrict__ x, T* __restrict__ y, int S, float scale) {
  __shared__ float shm[64];
  const int64_t row = blockIdx.x;
  const int L = (int)(row % S) + 1;  // valid columns
  const int nvec = S / V;
  float v[kItems][V];
  float m = -INFINITY;
#pragma unroll
  for (int it = 0; it < kItems; ++it) {
    const int vi = threadIdx.x + it * blockDim.x;
    if (vi < nvec && vi * V < L) {
      load_vec<T, V>(x + row * S + vi * V, v[it]);
#pragma unroll
      for (int k = 0; k < V; ++k) {
        v[it][k] = vi * V + k < L ? v[it][k] * scale : -INFINITY;
        m = fmaxf(m, v[it][k]);
      }
    }
  }
  const float M = block_max(m, shm);
  float s = 0.f;
#pragma unroll
  for (int it = 0; it < kItems; ++it) {
    const int vi = threadIdx.x + it * blockDim.x;
    if (vi < nvec && vi * V < L)
#pragma unroll
      for (int k = 0; k < V; ++k) {
        v[it][k] = fast_exp(v[it][k] - M);
        s += v[it][k];
      }
  }
  const float inv = 1.f / block_sum(s, shm);
#pragma unroll
  for (int it = 0; it < kItems; ++it) {
    const int vi = threadIdx.x + it * blockDim.x;
    if (vi < nvec) {
#pragma unroll
      for (int k = 0; k < V; ++k) v[it][k] = vi * V < L ? v[it][k] * inv : 0.f;
      store_vec<T, V>(y + row * S + vi * V, v[it]);
    }
  }
}

// dx = scale * y * (dy - sum_j y_j dy_j); zero above the diagonal (y is zero there).
template <typename T, int V>
__global__ void __launch_bounds__(kMaxThreads)
    csm_bwd_kernel(const T* __restrict__ dy, const T* __restrict__ y, T* __restrict__ dx, int S, float scale) {
  __shared__ float shm[64];
  const int64_t row = blockIdx.x;
  const int L = (int)(row % S) + 1;
  const int nvec = S / V;
  float yv[kItems][V], gv[kItems][V];
  float dot = 0.f;
#pragma unroll
  for (int it = 0; it < kItems; ++it) {
    const int vi = threadIdx.x + it * blockDim.x;
    if (vi < nvec && vi * V < L) {
      load_vec<T, V>(y + row * S + vi * V, yv[it]);
      load_vec<T, V>(dy + row * S + vi * V, gv[it]);
#pragma unroll
      for (int k = 0; k < V; ++k) {
        if (vi * V + k >= L) yv[it][k] = 0.f;  // in case y above the diagonal is not exactly zero
        dot += yv[it][k] * gv[it][k];
      }
    }
  }
  const float D = block_sum(dot, shm);
#pragma unroll
  for (int it = 0; it < kItems; ++it) {
    const int vi = threadIdx.x + it * blockDim.x;
    if (vi < nvec) {
#pragma unroll
      for (int k = 0; k < V; ++k) gv[it][k] = vi * V < L ? scale * yv[it][k] * (gv[it][k] - D) : 0.f;
      store_vec<T, V>(dx + row * S + vi * V, gv[it]);
    }
  }
}

template <typename T>
bool vec_ok(int64_t n, std::initializer_list<const void*> ptrs) {
  if (n % max_vec<T>()) return false;
  for (auto p : ptrs)
    if (!aligned(p, 16)) return false;
  return true;
}

int row_threads(int nvec) { return std::min(kMaxThreads, std::max(32, round_up((nvec + kItems - 1) / kItems, 32))); }

}  // namespace

int64_t causal_softmax_max_len(int64_t elem_size, bool vectorized) {
  return (int64_t)kMaxThreads * kItems * (vectorized ? 16 / elem_size : 1);
}

std::vector<at::Tensor> cross_entropy_fwd(const at::Tensor& logits, const at::Tensor& targets) {
  TORCH_CHECK(logits.is_cuda() && logits.is_contiguous() && logits.dim() == 2, "cross_entropy: contiguous [N, vocab]");
  TORCH_CHECK(targets.scalar_type() == at::kLong && targets.is_contiguous() && targets.numel() == logits.size(0),
              "cross_entropy: targets must be int64 [N]");
  const c10::cuda::CUDAGuard guard(logits.device());
  const int64_t N = logits.size(0), vocab = logits.size(1);
  auto loss = at::empty({N}, logits.options().dtype(at::kFloat));
  auto lse = at::empty({N}, logits.options().dtype(at::kFloat));
  if (N == 0) return {loss, lse};
  NEOX_DISPATCH(logits.scalar_type(), "cross_entropy_fwd", [&] {
    with_vec<scalar_t>(vec_ok<scalar_t>(vocab, {logits.data_ptr()}), [&](auto vc) {
      constexpr int V = decltype(vc)::value;
      ce_fwd_kernel<scalar_t, V><<<(unsigned)N, 512, 0, at::cuda::getCurrentCUDAStream()>>>(
          logits.data_ptr<scalar_t>(), targets.data_ptr<int64_t>(), loss.data_ptr<float>(), lse.data_ptr<float>(),
          vocab);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return {loss, lse};
}

at::Tensor cross_entropy_bwd(const at::Tensor& logits, const at::Tensor& targets, const at::Tensor& lse,
                             const at::Tensor& scale) {
  TORCH_CHECK(scale.scalar_type() == at::kFloat && scale.numel() == 1, "cross_entropy_bwd: scale is one fp32");
  const c10::cuda::CUDAGuard guard(logits.device());
  const int64_t N = logits.size(0), vocab = logits.size(1);
  auto dlogits = at::empty_like(logits);
  if (N == 0) return dlogits;
  NEOX_DISPATCH(logits.scalar_type(), "cross_entropy_bwd", [&] {
    with_vec<scalar_t>(vec_ok<scalar_t>(vocab, {logits.data_ptr(), dlogits.data_ptr()}), [&](auto vc) {
      constexpr int V = decltype(vc)::value;
      ce_bwd_kernel<scalar_t, V><<<(unsigned)N, 512, 0, at::cuda::getCurrentCUDAStream()>>>(
          logits.data_ptr<scalar_t>(), targets.data_ptr<int64_t>(), lse.data_ptr<float>(), scale.data_ptr<float>(),
          dlogits.data_ptr<scalar_t>(), vocab);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return dlogits;
}

at::Tensor causal_softmax_fwd(const at::Tensor& x, double scale) {
  TORCH_CHECK(x.is_cuda() && x.is_contiguous() && x.dim() >= 2 && x.size(-1) == x.size(-2),
              "causal_softmax: contiguous CUDA [..., s, s]");
  const c10::cuda::CUDAGuard guard(x.device());
  const int S = (int)x.size(-1);
  auto y = at::empty_like(x);
  const int64_t rows = S ? x.numel() / S : 0;
  if (rows == 0) return y;
  NEOX_DISPATCH(x.scalar_type(), "causal_softmax_fwd", [&] {
    with_vec<scalar_t>(vec_ok<scalar_t>(S, {x.data_ptr(), y.data_ptr()}), [&](auto vc) {
      constexpr int V = decltype(vc)::value;
      TORCH_CHECK(S <= kMaxThreads * kItems * V, "causal_softmax: sequence too long for the fused kernel");
      csm_fwd_kernel<scalar_t, V><<<(unsigned)rows, row_threads(S / V), 0, at::cuda::getCurrentCUDAStream()>>>(
          x.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), S, (float)scale);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return y;
}

at::Tensor causal_softmax_bwd(const at::Tensor& dy_in, const at::Tensor& y, double scale) {
  auto dy = dy_in.contiguous();
  TORCH_CHECK(dy.sizes() == y.sizes(), "causal_softmax_bwd: shapes");
  const c10::cuda::CUDAGuard guard(y.device());
  const int S = (int)y.size(-1);
  auto dx = at::empty_like(y);
  const int64_t rows = S ? y.numel() / S : 0;
  if (rows == 0) return dx;
  NEOX_DISPATCH(y.scalar_type(), "causal_softmax_bwd", [&] {
    with_vec<scalar_t>(vec_ok<scalar_t>(S, {dy.data_ptr(), y.data_ptr(), dx.data_ptr()}), [&](auto vc) {
      constexpr int V = decltype(vc)::value;
      TORCH_CHECK(S <= kMaxThreads * kItems * V, "causal_softmax: sequence too long for the fused kernel");
      csm_bwd_kernel<scalar_t, V><<<(unsigned)rows, row_threads(S / V), 0, at::cuda::getCurrentCUDAStream()>>>(
          dy.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), dx.data_ptr<scalar_t>(), S, (float)scale);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return dx;
}

}  // namespace neox
