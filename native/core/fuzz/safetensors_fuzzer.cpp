// libFuzzer target: bytes as a model.safetensors file, read as SafetensorsFile reads a mapped
// file (the whole header validated), then every tensor viewed and copied out.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <vector>

#include "io/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const auto file = vt::SafetensorsFile::from_bytes(data, size, "fuzz.safetensors");
    uint64_t covered = 0;
    for (const vt::SafetensorsEntry& entry : file->entries()) {
      const torch::Tensor tensor = file->tensor(entry.name);
      // What open() promises: each tensor's bytes are its span, and the spans tile the data.
      if (entry.begin != covered || tensor.nbytes() != entry.end - entry.begin) std::abort();
      covered = entry.end;
      // A copy through memcpy has AddressSanitizer check that the view lies inside the bytes.
      std::vector<uint8_t> copy(tensor.nbytes());
      if (!copy.empty()) std::memcpy(copy.data(), tensor.data_ptr(), copy.size());
    }
  } catch (const std::exception&) {
    // Refusing bad bytes is the reader's job: only crashes and sanitizer reports are findings.
  }
  return 0;
}
