// libFuzzer target: bytes as a pytorch_model.bin (torch.save's zip archive), read by the
// restricted unpickler into a state dict.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <exception>

#include "io/torch_pickle.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    for (const auto& [name, tensor] : vt::load_torch_checkpoint(data, size, "fuzz.bin")) {
      // What the reader promises: every view (offset, sizes, strides) stays inside its storage.
      if (tensor.numel() == 0) continue;
      __int128 reach = tensor.storage_offset() + 1;
      for (int64_t i = 0; i < tensor.dim(); ++i) reach += static_cast<__int128>(tensor.size(i) - 1) * tensor.stride(i);
      if (reach * static_cast<__int128>(tensor.element_size()) > static_cast<__int128>(tensor.storage().nbytes())) std::abort();
    }
  } catch (const std::exception&) {
    // Refusing bad bytes is the reader's job: only crashes and sanitizer reports are findings.
  }
  return 0;
}
