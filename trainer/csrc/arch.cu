// Which code the running GPU executes: the machine code (SASS) version picked for this device and the
// PTX version it came from, read off a kernel of this module. cudaFuncGetAttributes fails with
// "no kernel image" when no SASS and no PTX in the fat binary fits the device.
#include "common.h"

namespace neox {
namespace {
__global__ void probe_kernel(int* out) {
#ifdef __CUDA_ARCH__
  *out = __CUDA_ARCH__;
#endif
}
}  // namespace

std::vector<int64_t> kernel_image(int64_t device) {
  const c10::cuda::CUDAGuard guard((c10::DeviceIndex)device);
  cudaFuncAttributes attr;
  const cudaError_t err = cudaFuncGetAttributes(&attr, probe_kernel);
  if (err != cudaSuccess) {
    (void)cudaGetLastError();  // clear the sticky-free error so later calls are unaffected
    TORCH_CHECK(false, "no kernel image for this GPU: ", cudaGetErrorString(err));
  }
  auto out = at::empty({1}, at::TensorOptions().device(at::kCUDA, device).dtype(at::kInt));
  probe_kernel<<<1, 1, 0, at::cuda::getCurrentCUDAStream()>>>(out.data_ptr<int>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {attr.binaryVersion, attr.ptxVersion, out.item<int>()};
}

}  // namespace neox
