// Partial rotary embedding, rotate-half convention (FORMATS.md section 4).
// t: [B, Hh, S, D] with any strides but a unit last stride; cos/sin: fp32 [S, rot]; out: contiguous.
// The backward pass is the transpose: the same kernel with the sine terms swapped and negated.
#include "common.h"

namespace neox {
namespace {

// Grid: (chunks of kRows * rows_per_block positions, b * heads). A block's threads split into rows of U
// "units" (a V-wide piece of the rotated half-pair, or of the pass-through channels); each thread does
// its unit for kRows positions, loading all of them before computing, so more bytes are in flight.
// The only divisions are 32-bit ones on the thread index and one per block for (b, head).
constexpr int kRows = 2;

template <typename T, int V>
__global__ void __launch_bounds__(256) rotary_kernel(const T* __restrict__ t, const float* __restrict__ cosv,
                              const float* __restrict__ sinv, T* __restrict__ out, int Hh, int S, int D, int rot,
                              int64_t sb, int64_t sh, int64_t ss, int rows_per_block, bool backward) {
  const int half = rot / 2;
  const int u_rot = half / V, U = u_rot + (D - rot) / V;
  const int local = threadIdx.x / U, u = threadIdx.x - local * U;
  if (local >= rows_per_block) return;
  const int s0 = blockIdx.x * rows_per_block * kRows + local;
  const int bh = blockIdx.y, b = bh / Hh, h = bh - b * Hh;
  const T* src = t + b * sb + h * sh;
  T* dst = out + (int64_t)bh * S * D;
  if (u < u_rot) {
    const int j = u * V;
    Vec<T, V> lo[kRows], hi[kRows];
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      const int s = s0 + r * rows_per_block;
      if (s < S) {
        lo[r] = *reinterpret_cast<const Vec<T, V>*>(src + s * ss + j);
        hi[r] = *reinterpret_cast<const Vec<T, V>*>(src + s * ss + j + half);
      }
    }
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      const int s = s0 + r * rows_per_block;
      if (s < S) {
        const float* c = cosv + (int64_t)s * rot + j;
        const float* sn = sinv + (int64_t)s * rot + j;
        float o_lo[V], o_hi[V];
#pragma unroll
        for (int k = 0; k < V; ++k) {
          // forward: lo' = lo*c_lo - hi*s_lo, hi' = hi*c_hi + lo*s_hi; backward swaps and negates the sines
          const float s_lo = backward ? -sn[k + half] : sn[k];
          const float s_hi = backward ? -sn[k] : sn[k + half];
          const float a = static_cast<float>(lo[r].v[k]), bb = static_cast<float>(hi[r].v[k]);
          o_lo[k] = a * c[k] - bb * s_lo;
          o_hi[k] = bb * c[k + half] + a * s_hi;
        }
        store_vec<T, V>(dst + (int64_t)s * D + j, o_lo);
        store_vec<T, V>(dst + (int64_t)s * D + j + half, o_hi);
      }
    }
  } else {
    const int j = rot + (u - u_rot) * V;
    Vec<T, V> p[kRows];
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      const int s = s0 + r * rows_per_block;
      if (s < S) p[r] = *reinterpret_cast<const Vec<T, V>*>(src + s * ss + j);
    }
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      const int s = s0 + r * rows_per_block;
      if (s < S) *reinterpret_cast<Vec<T, V>*>(dst + (int64_t)s * D + j) = p[r];
    }
  }
}

}  // namespace

at::Tensor rotary_fwd(const at::Tensor& t, const at::Tensor& cos, const at::Tensor& sin, int64_t rot,
                      bool backward) {
  TORCH_CHECK(t.is_cuda() && t.dim() == 4 && t.stride(3) == 1, "rotary: t must be CUDA [b, heads, s, d], unit last stride");
  TORCH_CHECK(cos.scalar_type() == at::kFloat && sin.scalar_type() == at::kFloat && cos.is_contiguous() &&
                  sin.is_contiguous(), "rotary: cos/sin must be contiguous fp32");
  const int64_t B = t.size(0), Hh = t.size(1), S = t.size(2), D = t.size(3);
  TORCH_CHECK(rot % 2 == 0 && rot > 0 && rot <= D, "rotary: rot_dim must be even and <= head_dim");
  TORCH_CHECK(cos.numel() == S * rot && sin.numel() == S * rot, "rotary: cos/sin must be [s, rot_dim]");
  TORCH_CHECK(B * Hh <= 65535 && S < (1LL << 31), "rotary: batch * heads must be <= 65535");
  const c10::cuda::CUDAGuard guard(t.device());
  auto out = at::empty(t.sizes(), t.options());
  if (t.numel() == 0) return out;
  NEOX_DISPATCH(t.scalar_type(), "rotary", [&] {
    // widest V (elements, <= 16 bytes) dividing the halves, the pass-through part, the strides and pointers
    int V = max_vec<scalar_t>();
    auto ok = [&](int v) {
      const int bytes = v * (int)sizeof(scalar_t);
      return (rot / 2) % v == 0 && (D - rot) % v == 0 && t.stride(0) % v == 0 && t.stride(1) % v == 0 &&
             t.stride(2) % v == 0 && aligned(t.data_ptr(), bytes) && aligned(out.data_ptr(), bytes);
    };
    while (V > 1 && !ok(V)) V /= 2;
    auto launch = [&](auto vc) {
      constexpr int VV = decltype(vc)::value;
      const int U = (int)((rot / 2) / VV + (D - rot) / VV);
      TORCH_CHECK(U <= 256, "rotary: head_dim too large for the fused kernel");
      const int rows_per_block = std::max(1, 256 / U);
      const int per_block = rows_per_block * kRows;
      const dim3 grid((unsigned)((S + per_block - 1) / per_block), (unsigned)(B * Hh));
      rotary_kernel<scalar_t, VV><<<grid, rows_per_block * U, 0, at::cuda::getCurrentCUDAStream()>>>(
          t.data_ptr<scalar_t>(), cos.data_ptr<float>(), sin.data_ptr<float>(), out.data_ptr<scalar_t>(), (int)Hh,
          (int)S, (int)D, (int)rot, t.stride(0), t.stride(1), t.stride(2), rows_per_block, backward);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    };
    switch (V) {
      case 8: if constexpr (max_vec<scalar_t>() >= 8) launch(std::integral_constant<int, 8>{}); break;
      case 4: launch(std::integral_constant<int, 4>{}); break;
      case 2: launch(std::integral_constant<int, 2>{}); break;
      default: launch(std::integral_constant<int, 1>{}); break;
    }
  });
  return out;
}

}  // namespace neox
