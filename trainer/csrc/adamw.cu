// AdamW on fp32 master weights of bf16 parameters, in one pass per tensor (trainer.optim's fused step):
// reads the bf16 gradient, the master and both moments, writes them back and the bf16 parameter.
// torch's fused AdamW wants gradients of the masters' dtype, which costs a cast pass and a copy-back
// pass more (12 bytes per parameter of 42).
#include "common.h"

#include <vector>

namespace neox {
namespace {

struct AdamWArgs {
  float beta1, beta2, eps, lr_decay;  // lr_decay = lr * weight_decay
  float step_size, sqrt_bc2;          // lr / (1 - beta1^t), sqrt(1 - beta2^t)
};

template <int V>
__global__ void adamw_kernel(at::BFloat16* __restrict__ param, const at::BFloat16* __restrict__ grad,
                             float* __restrict__ master, float* __restrict__ exp_avg,
                             float* __restrict__ exp_avg_sq, const float* __restrict__ grad_scale,
                             AdamWArgs a, int64_t nvec) {
  // the clip scale stays on the device (no host sync); gradients are divided by it, as torch's grad_scale
  const float scale = grad_scale ? *grad_scale : 1.f;
  const int64_t stride = (int64_t)gridDim.x * blockDim.x;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < nvec; i += stride) {
    float g[V], p[V], m[V], v[V];
    load_vec<at::BFloat16, V>(grad + i * V, g);
    load_vec<float, V>(master + i * V, p);
    load_vec<float, V>(exp_avg + i * V, m);
    load_vec<float, V>(exp_avg_sq + i * V, v);
#pragma unroll
    for (int k = 0; k < V; ++k) {  // the order of torch's fused AdamW kernel, so the two agree closely
      const float gk = g[k] / scale;
      p[k] -= a.lr_decay * p[k];
      m[k] = a.beta1 * m[k] + (1.f - a.beta1) * gk;
      v[k] = a.beta2 * v[k] + (1.f - a.beta2) * gk * gk;
      p[k] -= a.step_size * m[k] / (sqrtf(v[k]) / a.sqrt_bc2 + a.eps);
    }
    store_vec<float, V>(master + i * V, p);
    store_vec<float, V>(exp_avg + i * V, m);
    store_vec<float, V>(exp_avg_sq + i * V, v);
    store_vec<at::BFloat16, V>(param + i * V, p);
  }
}

void check(const at::Tensor& t, at::ScalarType dtype, const at::Tensor& like, const char* what) {
  TORCH_CHECK(t.is_cuda() && t.scalar_type() == dtype && t.is_contiguous(), "adamw_step: ", what,
              " must be a contiguous CUDA tensor of ", dtype);
  TORCH_CHECK(t.numel() == like.numel() && t.device() == like.device(), "adamw_step: ", what,
              " does not match its parameter");
}

}  // namespace

// One launch per parameter; `grad_scale` (an fp32 scalar on the device, or undefined) divides the gradients.
void adamw_step(const std::vector<at::Tensor>& params, const std::vector<at::Tensor>& grads,
                const std::vector<at::Tensor>& masters, const std::vector<at::Tensor>& exp_avgs,
                const std::vector<at::Tensor>& exp_avg_sqs, double lr, double beta1, double beta2, double eps,
                double weight_decay, int64_t step, const c10::optional<at::Tensor>& grad_scale) {
  const size_t n = params.size();
  TORCH_CHECK(grads.size() == n && masters.size() == n && exp_avgs.size() == n && exp_avg_sqs.size() == n,
              "adamw_step: the tensor lists differ in length");
  TORCH_CHECK(step >= 1, "adamw_step: step counts from 1");
  if (n == 0) return;
  const float* scale = nullptr;
  if (grad_scale.has_value() && grad_scale->defined()) {
    TORCH_CHECK(grad_scale->is_cuda() && grad_scale->scalar_type() == at::kFloat && grad_scale->numel() == 1,
                "adamw_step: grad_scale must be one fp32 value on the GPU");
    scale = grad_scale->data_ptr<float>();
  }
  AdamWArgs a;
  a.beta1 = (float)beta1;
  a.beta2 = (float)beta2;
  a.eps = (float)eps;
  a.lr_decay = (float)(lr * weight_decay);
  a.step_size = (float)(lr / (1.0 - std::pow(beta1, (double)step)));
  a.sqrt_bc2 = (float)std::sqrt(1.0 - std::pow(beta2, (double)step));
  const c10::cuda::CUDAGuard guard(params[0].device());
  auto stream = at::cuda::getCurrentCUDAStream();
  const int max_blocks = num_sms() * 8;
  for (size_t i = 0; i < n; ++i) {
    const at::Tensor& p = params[i];
    check(p, at::kBFloat16, p, "a parameter");
    check(grads[i], at::kBFloat16, p, "a gradient");
    check(masters[i], at::kFloat, p, "a master weight");
    check(exp_avgs[i], at::kFloat, p, "exp_avg");
    check(exp_avg_sqs[i], at::kFloat, p, "exp_avg_sq");
    const int64_t numel = p.numel();
    if (numel == 0) continue;
    auto* pp = reinterpret_cast<at::BFloat16*>(p.data_ptr());
    auto* gp = reinterpret_cast<const at::BFloat16*>(grads[i].data_ptr());
    float *mp = masters[i].data_ptr<float>(), *ap = exp_avgs[i].data_ptr<float>(),
          *sp = exp_avg_sqs[i].data_ptr<float>();
    // 4 elements a thread (16 bytes of each fp32 tensor) where every pointer allows it
    const bool vec = numel % 4 == 0 && aligned(pp, 8) && aligned(gp, 8) && aligned(mp, 16) && aligned(ap, 16) &&
                     aligned(sp, 16);
    with_vec<float>(vec, [&](auto vc) {
      constexpr int V = decltype(vc)::value;
      const int64_t nvec = numel / V;
      const int threads = 256;
      const int blocks = (int)std::min<int64_t>((nvec + threads - 1) / threads, max_blocks);
      adamw_kernel<V><<<blocks, threads, 0, stream>>>(pp, gp, mp, ap, sp, scale, a, nvec);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
}

}  // namespace neox
