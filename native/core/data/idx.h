// MNIST-style IDX files (http://yann.lecun.com/exdb/mnist/): a big-endian header (magic
// 0x0000080N for N dimensions of unsigned bytes, then N 32-bit sizes) followed by the data,
// raw or gzipped (told apart by the gzip magic 1f 8b, as Fashion-MNIST ships them).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace vt {

// The whole file, inflated when it is gzipped; errors name `path`.
std::vector<uint8_t> read_maybe_gzipped(const std::string& path);

struct IdxImages {
  int64_t count = 0;
  int rows = 0, cols = 0;
  std::vector<uint8_t> pixels;  // count * rows * cols bytes, image after image
};

// An idx3-ubyte images file ([n, rows, cols] uint8) and an idx1-ubyte labels file ([n] uint8).
// Magic, dimensions and the data size (truncation, trailing bytes) are checked, errors name
// the file.
IdxImages read_idx_images(const std::string& path);
std::vector<uint8_t> read_idx_labels(const std::string& path);

}  // namespace vt
