// What the oneDNN paths (dnnl_linear, dnnl_attention, dnnl_conv) share. Include only under
// VISIONTORCH_WITH_DNNL.
#pragma once

#include <cstdlib>
#include <string>
#include <unordered_map>

#include <torch/torch.h>
#include <oneapi/dnnl/dnnl.hpp>

namespace vt::kernels {

// float32 or bfloat16 (the only dtypes these paths take).
inline dnnl::memory::data_type dnnl_type(torch::ScalarType type) {
  return type == torch::kBFloat16 ? dnnl::memory::data_type::bf16 : dnnl::memory::data_type::f32;
}

// oneDNN answers with its slow reference kernel where it has no optimized one for a problem;
// the paths then leave the work to torch.
inline bool is_reference_kernel(const dnnl::primitive_desc_base& description) {
  return std::string(description.impl_info_str()).rfind("ref", 0) == 0;
}

// VISIONTORCH_CONV_WINOGRAD=0 keeps every convolution on the direct kernels, for outputs that
// match PyTorch's to the last bits rather than to ~1e-6.
inline bool winograd_enabled() {
  static const bool enabled = [] {
    const char* setting = std::getenv("VISIONTORCH_CONV_WINOGRAD");
    return setting == nullptr || std::string(setting) != "0";
  }();
  return enabled;
}

// Runs a primitive on the CPU engine and waits for it.
inline void run_primitive(const dnnl::primitive& primitive, const dnnl::engine& engine,
                          const std::unordered_map<int, dnnl::memory>& arguments) {
  dnnl::stream stream(engine);
  primitive.execute(stream, arguments);
  stream.wait();
}

}  // namespace vt::kernels
