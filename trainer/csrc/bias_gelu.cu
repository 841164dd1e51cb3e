// Bias + tanh GELU (FORMATS.md section 4): y = gelu(x + b), b broadcast over rows of length H.
#include "common.h"

namespace neox {
namespace {

constexpr float kC = 0.7978845608028654f;  // sqrt(2/pi)
constexpr float kA = 0.044715f;

// tanh: fp32 through one exp (|error| ~1e-7, far under the 1e-5 target, several times cheaper than
// tanhf); half types through the hardware tanh (relative error ~5e-4, under their own rounding).
template <typename T>
__device__ __forceinline__ float fast_tanh(float u) {
  if constexpr (std::is_same_v<T, float>) {
    return 1.f - __fdividef(2.f, __expf(2.f * u) + 1.f);
  } else {
    float r;
    asm("tanh.approx.f32 %0, %1;" : "=f"(r) : "f"(u));
    return r;
  }
}

template <typename T>
__device__ __forceinline__ float gelu(float x) {
  return 0.5f * x * (1.f + fast_tanh<T>(kC * x * (1.f + kA * x * x)));
}

template <typename T>
__device__ __forceinline__ float gelu_grad(float x) {
  const float t = fast_tanh<T>(kC * x * (1.f + kA * x * x));
  return 0.5f * (1.f + t) + 0.5f * x * (1.f - t * t) * kC * (1.f + 3.f * kA * x * x);
}

// Each thread takes two vectors per step, both loaded before use, to keep more bytes in flight.
template <typename T, int V>
__global__ void bias_gelu_fwd_kernel(const T* __restrict__ x, const T* __restrict__ b, T* __restrict__ y,
                                     int64_t nvec, int H) {
  const int64_t stride = (int64_t)gridDim.x * blockDim.x;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < nvec; i += 2 * stride) {
    const int64_t i2 = i + stride;
    const bool two = i2 < nvec;
    Vec<T, V> xa = *reinterpret_cast<const Vec<T, V>*>(x + i * V), xb;
    if (two) xb = *reinterpret_cast<const Vec<T, V>*>(x + i2 * V);
    float bv[V], o[V];
    load_vec<T, V>(b + (int)((i * V) % H), bv);
#pragma unroll
    for (int k = 0; k < V; ++k) o[k] = gelu<T>(static_cast<float>(xa.v[k]) + bv[k]);
    store_vec<T, V>(y + i * V, o);
    if (two) {
      load_vec<T, V>(b + (int)((i2 * V) % H), bv);
#pragma unroll
      for (int k = 0; k < V; ++k) o[k] = gelu<T>(static_cast<float>(xb.v[k]) + bv[k]);
      store_vec<T, V>(y + i2 * V, o);
    }
  }
}

// Block (32, 8): threadIdx.x walks vector columns, threadIdx.y rows; each block also sums its dx over
// its rows into one partial dbias row, so dbias needs no second pass over dx.
template <typename T, int V>
__global__ void bias_gelu_bwd_kernel(const T* __restrict__ dy, const T* __restrict__ x, const T* __restrict__ b,
                                     T* __restrict__ dx, float* __restrict__ dbias_part, int64_t rows, int H) {
  __shared__ float red[8][32][V + 1];
  const int col = (blockIdx.x * 32 + threadIdx.x) * V;
  float acc[V];
#pragma unroll
  for (int k = 0; k < V; ++k) acc[k] = 0.f;
  if (col < H) {
    float bv[V];
    load_vec<T, V>(b + col, bv);
    const int64_t step = (int64_t)gridDim.y * 8;
    for (int64_t r = (int64_t)blockIdx.y * 8 + threadIdx.y; r < rows; r += 2 * step) {
      // two rows per step, all four loads issued before use
      const int64_t rr[2] = {r, r + step};
      Vec<T, V> xv[2], gv[2];
#pragma unroll
      for (int q = 0; q < 2; ++q) {
        if (rr[q] < rows) {
          xv[q] = *reinterpret_cast<const Vec<T, V>*>(x + rr[q] * H + col);
          gv[q] = *reinterpret_cast<const Vec<T, V>*>(dy + rr[q] * H + col);
        }
      }
#pragma unroll
      for (int q = 0; q < 2; ++q) {
        if (rr[q] < rows) {
          float o[V];
#pragma unroll
          for (int k = 0; k < V; ++k) {
            o[k] = static_cast<float>(gv[q].v[k]) * gelu_grad<T>(static_cast<float>(xv[q].v[k]) + bv[k]);
            // dbias sums the dx that is stored, rounded, as the unfused path would
            acc[k] += static_cast<float>(static_cast<T>(o[k]));
          }
          store_vec<T, V>(dx + rr[q] * H + col, o);
        }
      }
    }
  }
#pragma unroll
  for (int k = 0; k < V; ++k) red[threadIdx.y][threadIdx.x][k] = acc[k];
  __syncthreads();
  if (threadIdx.y == 0 && col < H) {
#pragma unroll
    for (int k = 0; k < V; ++k) {
      float s = 0.f;
#pragma unroll
      for (int j = 0; j < 8; ++j) s += red[j][threadIdx.x][k];
      dbias_part[(int64_t)blockIdx.y * H + col + k] = s;
    }
  }
}

bool vectorizable(int V, int H, std::initializer_list<const void*> ptrs, int bytes) {
  if (H % V) return false;
  for (auto p : ptrs)
    if (!aligned(p, bytes)) return false;
  return true;
}

}  // namespace

at::Tensor bias_gelu_fwd(const at::Tensor& x, const at::Tensor& bias) {
  TORCH_CHECK(x.is_cuda() && x.is_contiguous() && bias.is_contiguous(), "bias_gelu: contiguous CUDA tensors");
  TORCH_CHECK(bias.dim() == 1 && x.size(-1) == bias.size(0), "bias_gelu: bias must be [x.shape[-1]]");
  TORCH_CHECK(x.scalar_type() == bias.scalar_type(), "bias_gelu: x and bias dtypes differ");
  const c10::cuda::CUDAGuard guard(x.device());
  auto y = at::empty_like(x);
  const int H = (int)bias.size(0);
  if (x.numel() == 0) return y;
  NEOX_DISPATCH(x.scalar_type(), "bias_gelu_fwd", [&] {
    constexpr int VM = max_vec<scalar_t>();
    const bool vec = vectorizable(VM, H, {x.data_ptr(), bias.data_ptr(), y.data_ptr()}, 16);
    with_vec<scalar_t>(vec, [&](auto vc) {
      constexpr int V = decltype(vc)::value;
      const int64_t nvec = x.numel() / V;
      const int threads = 256;
      const int64_t blocks = std::min<int64_t>((nvec + threads - 1) / threads, (int64_t)num_sms() * 16);
      bias_gelu_fwd_kernel<scalar_t, V><<<(unsigned)blocks, threads, 0, at::cuda::getCurrentCUDAStream()>>>(
          x.data_ptr<scalar_t>(), bias.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), nvec, H);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return y;
}

std::vector<at::Tensor> bias_gelu_bwd(const at::Tensor& dy_in, const at::Tensor& x, const at::Tensor& bias) {
  auto dy = dy_in.contiguous();
  TORCH_CHECK(x.is_contiguous() && dy.sizes() == x.sizes(), "bias_gelu_bwd: shapes");
  const c10::cuda::CUDAGuard guard(x.device());
  const int H = (int)bias.size(0);
  const int64_t rows = x.numel() / H;
  auto dx = at::empty_like(x);
  at::Tensor dbias;
  NEOX_DISPATCH(x.scalar_type(), "bias_gelu_bwd", [&] {
    constexpr int VM = max_vec<scalar_t>();
    const bool vec = vectorizable(VM, H, {x.data_ptr(), dy.data_ptr(), bias.data_ptr(), dx.data_ptr()}, 16);
    with_vec<scalar_t>(vec, [&](auto vc) {
      constexpr int V = decltype(vc)::value;
      const int grid_x = (H / V + 31) / 32;
      const int64_t want = std::max<int64_t>(1, (int64_t)num_sms() * 8 / grid_x);
      const int grid_y = (int)std::min<int64_t>(std::min<int64_t>(want, (rows + 7) / 8), 65535);
      auto part = at::empty({std::max(grid_y, 1), H}, x.options().dtype(at::kFloat));
      if (rows > 0) {
        bias_gelu_bwd_kernel<scalar_t, V><<<dim3(grid_x, grid_y), dim3(32, 8), 0,
                                             at::cuda::getCurrentCUDAStream()>>>(
            dy.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), bias.data_ptr<scalar_t>(), dx.data_ptr<scalar_t>(),
            part.data_ptr<float>(), rows, H);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        dbias = part.sum(0).to(bias.scalar_type());
      } else {
        dbias = at::zeros_like(bias);
      }
    });
  });
  return {dx, dbias};
}

}  // namespace neox
