// Shared helpers for the fused kernels: 16-byte vectors, block reductions, dtype/vector dispatch.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

namespace neox {

// Kernels accumulate in fp32 and support these storage types only.
#define NEOX_DISPATCH(TYPE, NAME, ...)                                 \
  AT_DISPATCH_SWITCH(TYPE, NAME,                                       \
                     AT_DISPATCH_CASE(at::ScalarType::Float, __VA_ARGS__) \
                     AT_DISPATCH_CASE(at::ScalarType::Half, __VA_ARGS__)  \
                     AT_DISPATCH_CASE(at::ScalarType::BFloat16, __VA_ARGS__))

template <typename T, int N>
struct alignas(sizeof(T) * N) Vec {
  T v[N];
};

template <typename T, int N>
__device__ __forceinline__ void load_vec(const T* p, float (&out)[N]) {
  Vec<T, N> a = *reinterpret_cast<const Vec<T, N>*>(p);
#pragma unroll
  for (int k = 0; k < N; ++k) out[k] = static_cast<float>(a.v[k]);
}

template <typename T, int N>
__device__ __forceinline__ void store_vec(T* p, const float (&in)[N]) {
  Vec<T, N> a;
#pragma unroll
  for (int k = 0; k < N; ++k) a.v[k] = static_cast<T>(in[k]);
  *reinterpret_cast<Vec<T, N>*>(p) = a;
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Block-wide sum of (a, b); every thread gets the result. shm needs 64 floats.
__device__ __forceinline__ float2 block_sum2(float a, float b, float* shm) {
  const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
  a = warp_sum(a);
  b = warp_sum(b);
  __syncthreads();  // shm may still be read by a previous reduction
  if (lane == 0) {
    shm[wid] = a;
    shm[32 + wid] = b;
  }
  __syncthreads();
  if (wid == 0) {
    a = lane < nw ? shm[lane] : 0.f;
    b = lane < nw ? shm[32 + lane] : 0.f;
    a = warp_sum(a);
    b = warp_sum(b);
    if (lane == 0) {
      shm[0] = a;
      shm[32] = b;
    }
  }
  __syncthreads();
  return make_float2(shm[0], shm[32]);
}

__device__ __forceinline__ float block_sum(float a, float* shm) { return block_sum2(a, 0.f, shm).x; }

__device__ __forceinline__ float block_max(float a, float* shm) {
  const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
  a = warp_max(a);
  __syncthreads();
  if (lane == 0) shm[wid] = a;
  __syncthreads();
  if (wid == 0) {
    a = warp_max(lane < nw ? shm[lane] : -INFINITY);
    if (lane == 0) shm[0] = a;
  }
  __syncthreads();
  return shm[0];
}

// exp through the hardware exp2 unit: a few instructions instead of expf's longer accurate sequence;
// relative error stays near 1e-7 for the arguments softmax produces (x - max <= 0).
__device__ __forceinline__ float fast_exp(float x) { return exp2f(x * 1.4426950408889634f); }

// Merge two (max, sum of exp(x - max)) pairs of an online softmax.
__device__ __forceinline__ void lse_merge(float& m, float& s, float m2, float s2) {
  const float mn = fmaxf(m, m2);
  if (mn == -INFINITY) return;  // both empty
  s = s * expf(m - mn) + s2 * expf(m2 - mn);
  m = mn;
}

// Widest vector (<= 16 bytes) usable for every pointer and length given.
template <typename T>
constexpr int max_vec() {
  return 16 / sizeof(T);
}

inline bool aligned(const void* p, int bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

// Call f(integral_constant<int, V>) with the vector width V (16 bytes when `vec`, else 1 element).
template <typename T, typename F>
void with_vec(bool vec, F&& f) {
  if (vec)
    f(std::integral_constant<int, max_vec<T>()>{});
  else
    f(std::integral_constant<int, 1>{});
}

inline int num_sms() { return at::cuda::getCurrentDeviceProperties()->multiProcessorCount; }

inline int round_up(int v, int m) { return (v + m - 1) / m * m; }

}  // namespace neox
