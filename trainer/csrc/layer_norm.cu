// LayerNorm over the last dim. One block per row; each thread keeps its ITEMS vectors of the row in
// registers, so x is read once. The backward pass runs a persistent grid: each block walks many rows and
// accumulates its own dweight/dbias partials in shared memory (one fp32 row each), summed at the end.
#include "common.h"

namespace neox {
namespace {

constexpr int kItems = 4;  // forward: vectors per thread kept in registers
constexpr int kMaxThreads = 512;
// backward: half the vectors per thread and twice the threads, so it fits 64 registers (twice the
// resident threads of 4 items at 128 registers); the largest hidden size is the same
constexpr int kItemsB = 2;
constexpr int kMaxThreadsB = 1024;

// Merge (count, mean, M2) of two disjoint sets.
__device__ __forceinline__ void chan_merge(float& n, float& mu, float& m2, float n2, float mu2, float m22) {
  const float nn = n + n2;
  if (nn == 0.f) return;
  const float d = mu2 - mu, f = n2 / nn;
  mu += d * f;
  m2 += m22 + d * d * n * f;
  n = nn;
}

// Block-wide (count, mean, M2); every thread gets the result. shm needs 96 floats.
__device__ __forceinline__ void block_mean_m2(float& n, float& mu, float& m2, float* shm) {
  const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
#pragma unroll
  for (int o = 16; o > 0; o >>= 1)
    chan_merge(n, mu, m2, __shfl_xor_sync(0xffffffffu, n, o), __shfl_xor_sync(0xffffffffu, mu, o),
               __shfl_xor_sync(0xffffffffu, m2, o));
  if (lane == 0) {
    shm[wid] = n;
    shm[32 + wid] = mu;
    shm[64 + wid] = m2;
  }
  __syncthreads();
  if (wid == 0) {
    n = lane < nw ? shm[lane] : 0.f;
    mu = lane < nw ? shm[32 + lane] : 0.f;
    m2 = lane < nw ? shm[64 + lane] : 0.f;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
      chan_merge(n, mu, m2, __shfl_xor_sync(0xffffffffu, n, o), __shfl_xor_sync(0xffffffffu, mu, o),
                 __shfl_xor_sync(0xffffffffu, m2, o));
    if (lane == 0) {
      shm[0] = n;
      shm[32] = mu;
      shm[64] = m2;
    }
  }
  __syncthreads();
  n = shm[0];
  mu = shm[32];
  m2 = shm[64];
}

template <typename T, int V>
__global__ void __launch_bounds__(kMaxThreads)
    ln_fwd_kernel(const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ b, T* __restrict__ y,
                  float* __restrict__ mean, float* __restrict__ rstd, int H, float eps) {
  __shared__ float shm[96];
  const int64_t row = blockIdx.x;
  const int nvec = H / V;
  const T* xr = x + row * H;
  // raw 16-byte vectors stay in registers (4 per item for bf16 instead of 8 floats): more rows per SM
  Vec<T, V> raw[kItems];
  float sum = 0.f;
#pragma unroll
  for (int it = 0; it < kItems; ++it) {
    const int vi = threadIdx.x + it * blockDim.x;
    if (vi < nvec) raw[it] = *reinterpret_cast<const Vec<T, V>*>(xr + vi * V);
  }
#pragma unroll
  for (int it = 0; it < kItems; ++it) {
    if (threadIdx.x + it * blockDim.x < nvec) {
#pragma unroll
      for (int k = 0; k < V; ++k) sum += static_cast<float>(raw[it].v[k]);
    }
  }
  // exact two-pass mean and M2 over this thread's registers, then one block-wide merge (Chan et al.)
  float n = 0.f, mu = 0.f, m2 = 0.f;
#pragma unroll
  for (int it = 0; it < kItems; ++it)
    if (threadIdx.x + it * blockDim.x < nvec) n += V;
  if (n > 0.f) {
    mu = sum / n;
#pragma unroll
    for (int it = 0; it < kItems; ++it) {
      if (threadIdx.x + it * blockDim.x < nvec) {
#pragma unroll
        for (int k = 0; k < V; ++k) {
          const float d = static_cast<float>(raw[it].v[k]) - mu;
          m2 += d * d;
        }
      }
    }
  }
  block_mean_m2(n, mu, m2, shm);
  const float rs = 1.f / sqrtf(m2 / H + eps);
#pragma unroll
  for (int it = 0; it < kItems; ++it) {
    const int vi = threadIdx.x + it * blockDim.x;
    if (vi < nvec) {
      float wv[V], bv[V], o[V];
      load_vec<T, V>(w + vi * V, wv);
      load_vec<T, V>(b + vi * V, bv);
#pragma unroll
      for (int k = 0; k < V; ++k) o[k] = (static_cast<float>(raw[it].v[k]) - mu) * rs * wv[k] + bv[k];
      store_vec<T, V>(y + row * H + vi * V, o);
    }
  }
  if (threadIdx.x == 0) {
    mean[row] = mu;
    rstd[row] = rs;
  }
}

// dx = rstd * (g - mean(g) - xhat * mean(g * xhat)), g = dy * w; dw += dy * xhat; db += dy.
template <typename T, int V>
__global__ void __launch_bounds__(kMaxThreadsB)
    ln_bwd_kernel(const T* __restrict__ dy, const T* __restrict__ x, const T* __restrict__ w,
                  const float* __restrict__ mean, const float* __restrict__ rstd, T* __restrict__ dx,
                  float* __restrict__ dw_part, float* __restrict__ db_part, int64_t rows, int H) {
  extern __shared__ float acc[];  // [2, V, H/V]: dw, db partials; each thread owns its columns (no races)
  __shared__ float shm[64];
  const int nvec = H / V;
  float* accw = acc;
  float* accb = acc + H;
#pragma unroll
  for (int it = 0; it < kItemsB; ++it) {
    const int vi = threadIdx.x + it * blockDim.x;
    if (vi < nvec)
#pragma unroll
      for (int k = 0; k < V; ++k) accw[k * nvec + vi] = accb[k * nvec + vi] = 0.f;
  }
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const float mu = mean[row], rs = rstd[row];
    Vec<T, V> xr[kItemsB], gr[kItemsB];  // raw vectors: half the registers of fp32 copies for bf16
#pragma unroll
    for (int it = 0; it < kItemsB; ++it) {
      const int vi = threadIdx.x + it * blockDim.x;
      if (vi < nvec) {
        xr[it] = *reinterpret_cast<const Vec<T, V>*>(x + row * H + vi * V);
        gr[it] = *reinterpret_cast<const Vec<T, V>*>(dy + row * H + vi * V);
      }
    }
    float s1 = 0.f, s2 = 0.f;
#pragma unroll
    for (int it = 0; it < kItemsB; ++it) {
      const int vi = threadIdx.x + it * blockDim.x;
      if (vi < nvec) {
        float wv[V];
        load_vec<T, V>(w + vi * V, wv);
#pragma unroll
        for (int k = 0; k < V; ++k) {
          const float xh = (static_cast<float>(xr[it].v[k]) - mu) * rs, g = static_cast<float>(gr[it].v[k]);
          accw[k * nvec + vi] += g * xh;
          accb[k * nvec + vi] += g;
          s1 += g * wv[k];
          s2 += g * wv[k] * xh;
        }
      }
    }
    const float2 s = block_sum2(s1, s2, shm);
    const float m1 = s.x / H, m2 = s.y / H;
#pragma unroll
    for (int it = 0; it < kItemsB; ++it) {
      const int vi = threadIdx.x + it * blockDim.x;
      if (vi < nvec) {
        float wv[V], o[V];
        load_vec<T, V>(w + vi * V, wv);
#pragma unroll
        for (int k = 0; k < V; ++k) {
          const float xh = (static_cast<float>(xr[it].v[k]) - mu) * rs;
          o[k] = rs * (static_cast<float>(gr[it].v[k]) * wv[k] - m1 - xh * m2);
        }
        store_vec<T, V>(dx + row * H + vi * V, o);
      }
    }
  }
#pragma unroll
  for (int it = 0; it < kItemsB; ++it) {
    const int vi = threadIdx.x + it * blockDim.x;
    if (vi < nvec)
#pragma unroll
      for (int k = 0; k < V; ++k) {
        dw_part[(int64_t)blockIdx.x * H + vi * V + k] = accw[k * nvec + vi];
        db_part[(int64_t)blockIdx.x * H + vi * V + k] = accb[k * nvec + vi];
      }
  }
}

template <typename T>
bool ln_vec_ok(int H, std::initializer_list<const void*> ptrs) {
  if (H % max_vec<T>()) return false;
  for (auto p : ptrs)
    if (!aligned(p, 16)) return false;
  return true;
}

int ln_threads(int nvec, int items = kItems, int max_threads = kMaxThreads) {
  return std::min(max_threads, std::max(32, round_up((nvec + items - 1) / items, 32)));
}

}  // namespace

// Largest hidden size the kernels take: the register budget, and the backward pass's 2 * H fp32
// accumulators in shared memory (about 100 KB on sm_86/sm_89, 227 KB on sm_90).
int64_t layer_norm_max_hidden(int64_t elem_size, bool vectorized) {
  int64_t limit = (int64_t)kMaxThreads * kItems * (vectorized ? 16 / elem_size : 1);
  int count = 0;
  if (cudaGetDeviceCount(&count) == cudaSuccess && count > 0) {
    const int64_t smem = (int64_t)at::cuda::getCurrentDeviceProperties()->sharedMemPerBlockOptin;
    limit = std::min(limit, (smem - 1024) / (2 * (int64_t)sizeof(float)));
  } else {
    (void)cudaGetLastError();
  }
  return limit;
}

std::vector<at::Tensor> layer_norm_fwd(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, double eps) {
  TORCH_CHECK(x.is_cuda() && x.is_contiguous() && w.is_contiguous() && b.is_contiguous(), "layer_norm: contiguous CUDA");
  TORCH_CHECK(w.scalar_type() == x.scalar_type() && b.scalar_type() == x.scalar_type(), "layer_norm: dtypes differ");
  const int H = (int)x.size(-1);
  TORCH_CHECK(w.numel() == H && b.numel() == H, "layer_norm: weight/bias must be [hidden]");
  const int64_t rows = x.numel() / H;
  const c10::cuda::CUDAGuard guard(x.device());
  auto y = at::empty_like(x);
  auto mean = at::empty({rows}, x.options().dtype(at::kFloat));
  auto rstd = at::empty({rows}, x.options().dtype(at::kFloat));
  if (rows == 0) return {y, mean, rstd};
  NEOX_DISPATCH(x.scalar_type(), "layer_norm_fwd", [&] {
    const bool vec = ln_vec_ok<scalar_t>(H, {x.data_ptr(), w.data_ptr(), b.data_ptr(), y.data_ptr()});
    with_vec<scalar_t>(vec, [&](auto vc) {
      constexpr int V = decltype(vc)::value;
      TORCH_CHECK(H <= kMaxThreads * kItems * V, "layer_norm: hidden size too large for the fused kernel");
      ln_fwd_kernel<scalar_t, V><<<(unsigned)rows, ln_threads(H / V), 0, at::cuda::getCurrentCUDAStream()>>>(
          x.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(), b.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(),
          mean.data_ptr<float>(), rstd.data_ptr<float>(), H, (float)eps);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return {y, mean, rstd};
}

std::vector<at::Tensor> layer_norm_bwd(const at::Tensor& dy_in, const at::Tensor& x, const at::Tensor& w,
                                       const at::Tensor& mean, const at::Tensor& rstd) {
  auto dy = dy_in.contiguous();
  TORCH_CHECK(dy.sizes() == x.sizes(), "layer_norm_bwd: shapes");
  const int H = (int)x.size(-1);
  const int64_t rows = x.numel() / H;
  const c10::cuda::CUDAGuard guard(x.device());
  auto dx = at::empty_like(x);
  at::Tensor dw, db;
  if (rows == 0) return {dx, at::zeros_like(w), at::zeros_like(w)};
  NEOX_DISPATCH(x.scalar_type(), "layer_norm_bwd", [&] {
    const bool vec = ln_vec_ok<scalar_t>(H, {x.data_ptr(), dy.data_ptr(), w.data_ptr(), dx.data_ptr()});
    with_vec<scalar_t>(vec, [&](auto vc) {
      constexpr int V = decltype(vc)::value;
      TORCH_CHECK(H <= kMaxThreads * kItems * V, "layer_norm: hidden size too large for the fused kernel");
      auto kernel = ln_bwd_kernel<scalar_t, V>;
      const int threads = ln_threads(H / V, kItemsB, kMaxThreadsB);
      const size_t smem = 2 * (size_t)H * sizeof(float);
      C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
      int per_sm = 0;
      C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads, smem));
      TORCH_CHECK(per_sm > 0, "layer_norm_bwd: hidden size ", H, " needs more shared memory than this GPU has");
      const int64_t grid = std::min<int64_t>(rows, (int64_t)std::max(per_sm, 1) * num_sms());
      auto part = at::empty({2, grid, H}, x.options().dtype(at::kFloat));
      kernel<<<(unsigned)grid, threads, smem, at::cuda::getCurrentCUDAStream()>>>(
          dy.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(), mean.data_ptr<float>(),
          rstd.data_ptr<float>(), dx.data_ptr<scalar_t>(), part[0].data_ptr<float>(), part[1].data_ptr<float>(), rows, H);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      auto sums = part.sum(1).to(w.scalar_type());
      dw = sums[0];
      db = sums[1];
    });
  });
  return {dx, dw, db};
}

}  // namespace neox
