// Python bindings of the fused kernels (module name set by the build: neox_fused_kernels).
#include <torch/extension.h>

#include <vector>

namespace neox {
at::Tensor bias_gelu_fwd(const at::Tensor& x, const at::Tensor& bias);
std::vector<at::Tensor> bias_gelu_bwd(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& bias);
at::Tensor rotary_fwd(const at::Tensor& t, const at::Tensor& cos, const at::Tensor& sin, int64_t rot, bool backward);
std::vector<at::Tensor> layer_norm_fwd(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, double eps);
std::vector<at::Tensor> layer_norm_bwd(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& w,
                                       const at::Tensor& mean, const at::Tensor& rstd);
int64_t layer_norm_max_hidden(int64_t elem_size, bool vectorized);
std::vector<at::Tensor> cross_entropy_fwd(const at::Tensor& logits, const at::Tensor& targets);
at::Tensor cross_entropy_bwd(const at::Tensor& logits, const at::Tensor& targets, const at::Tensor& lse,
                             const at::Tensor& scale);
at::Tensor causal_softmax_fwd(const at::Tensor& x, double scale);
at::Tensor causal_softmax_bwd(const at::Tensor& dy, const at::Tensor& y, double scale);
int64_t causal_softmax_max_len(int64_t elem_size, bool vectorized);
void adamw_step(const std::vector<at::Tensor>& params, const std::vector<at::Tensor>& grads,
                const std::vector<at::Tensor>& masters, const std::vector<at::Tensor>& exp_avgs,
                const std::vector<at::Tensor>& exp_avg_sqs, double lr, double beta1, double beta2, double eps,
                double weight_decay, int64_t step, const c10::optional<at::Tensor>& grad_scale);
std::vector<int64_t> kernel_image(int64_t device);
}  // namespace neox

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("bias_gelu_fwd", &neox::bias_gelu_fwd);
  m.def("bias_gelu_bwd", &neox::bias_gelu_bwd);
  m.def("rotary_fwd", &neox::rotary_fwd);
  m.def("layer_norm_fwd", &neox::layer_norm_fwd);
  m.def("layer_norm_bwd", &neox::layer_norm_bwd);
  m.def("layer_norm_max_hidden", &neox::layer_norm_max_hidden);
  m.def("cross_entropy_fwd", &neox::cross_entropy_fwd);
  m.def("cross_entropy_bwd", &neox::cross_entropy_bwd);
  m.def("causal_softmax_fwd", &neox::causal_softmax_fwd);
  m.def("causal_softmax_bwd", &neox::causal_softmax_bwd);
  m.def("causal_softmax_max_len", &neox::causal_softmax_max_len);
  m.def("adamw_step", &neox::adamw_step, "AdamW over fp32 masters of bf16 parameters, in place");
  m.def("kernel_image", &neox::kernel_image, "(sass version, ptx version, __CUDA_ARCH__ seen) on a device");
}
