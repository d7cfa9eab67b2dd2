#include "data/idx.h"

#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <limits>

#include "common/error.h"

namespace vt {
namespace {

std::vector<uint8_t> read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  if (!in) fail("cannot open ", path, ": ", std::strerror(errno));
  const std::streamoff size = in.tellg();
  VT_CHECK(size >= 0, "cannot read ", path);
  std::vector<uint8_t> bytes(static_cast<size_t>(size));
  in.seekg(0);
  in.read(reinterpret_cast<char*>(bytes.data()), size);
  VT_CHECK(in.gcount() == size, "cannot read ", path, ": short read");
  return bytes;
}

std::vector<uint8_t> gunzip(const std::vector<uint8_t>& in, const std::string& path) {
  std::vector<uint8_t> out;
  // ISIZE, the last 4 bytes, is the inflated size mod 2^32: a good first guess for the buffer.
  if (in.size() >= 18) {
    const size_t n = in.size();
    out.reserve(static_cast<size_t>(in[n - 4]) | static_cast<size_t>(in[n - 3]) << 8 | static_cast<size_t>(in[n - 2]) << 16 |
                static_cast<size_t>(in[n - 1]) << 24);
  }
  z_stream zs{};
  VT_CHECK(inflateInit2(&zs, 16 + MAX_WBITS) == Z_OK, path, ": cannot initialise zlib");
  zs.next_in = const_cast<Bytef*>(in.data());
  size_t consumed = 0;
  uint8_t chunk[1 << 16];
  int rc = Z_OK;
  while (true) {
    // avail_in is 32-bit: feed large files in slices.
    if (zs.avail_in == 0 && consumed < in.size()) {
      const size_t slice = std::min<size_t>(in.size() - consumed, std::numeric_limits<uInt>::max());
      zs.next_in = const_cast<Bytef*>(in.data() + consumed);
      zs.avail_in = static_cast<uInt>(slice);
      consumed += slice;
    }
    zs.next_out = chunk;
    zs.avail_out = sizeof(chunk);
    rc = inflate(&zs, Z_NO_FLUSH);
    out.insert(out.end(), chunk, chunk + (sizeof(chunk) - zs.avail_out));
    if (rc == Z_STREAM_END) {
      // gzip allows several members back to back (`cat a.gz b.gz`).
      if (zs.avail_in == 0 && consumed == in.size()) break;
      if (inflateReset(&zs) != Z_OK) break;
      continue;
    }
    if (rc == Z_BUF_ERROR && zs.avail_in == 0 && consumed == in.size()) {
      inflateEnd(&zs);
      fail(path, ": truncated gzip data");
    }
    if (rc != Z_OK) {
      const std::string message = zs.msg != nullptr ? zs.msg : "error " + std::to_string(rc);
      inflateEnd(&zs);
      fail(path, ": corrupt gzip data (", message, ")");
    }
  }
  inflateEnd(&zs);
  return out;
}

uint32_t be32(const uint8_t* p) {
  return static_cast<uint32_t>(p[0]) << 24 | static_cast<uint32_t>(p[1]) << 16 | static_cast<uint32_t>(p[2]) << 8 |
         static_cast<uint32_t>(p[3]);
}

// Checks the header of an idx file of `dims` uint8 dimensions and returns the sizes.
std::vector<uint32_t> read_header(const std::vector<uint8_t>& data, int dims, const std::string& path, const char* what) {
  const size_t header = 4 + 4 * static_cast<size_t>(dims);
  VT_CHECK(data.size() >= 4, path, ": truncated idx file (", data.size(), " bytes)");
  const uint32_t magic = be32(data.data());
  const uint32_t expected = 0x00000800u | static_cast<uint32_t>(dims);
  if (magic != expected) {
    char text[2][11];
    std::snprintf(text[0], sizeof(text[0]), "0x%08x", magic);
    std::snprintf(text[1], sizeof(text[1]), "0x%08x", expected);
    fail(path, ": not an idx ", what, " file: magic number ", text[0], ", expected ", text[1]);
  }
  VT_CHECK(data.size() >= header, path, ": truncated idx header (", data.size(), " bytes)");
  std::vector<uint32_t> sizes;
  for (int d = 0; d < dims; ++d) sizes.push_back(be32(data.data() + 4 + 4 * d));
  return sizes;
}

// The data after the header must be exactly `items` * `item_size` bytes.
void check_data_size(const std::vector<uint8_t>& data, size_t header, uint64_t items, uint64_t item_size, const std::string& path) {
  const uint64_t have = data.size() - header;
  if (item_size != 0 && items > have / item_size) {
    fail(path, ": truncated idx file: the header announces ", items, " items of ", item_size, " bytes but only ", have,
         " data bytes follow");
  }
  const uint64_t need = items * item_size;
  VT_CHECK(have == need, path, ": ", have - need, " unexpected bytes after the ", items, " items the header announces");
}

}  // namespace

std::vector<uint8_t> read_maybe_gzipped(const std::string& path) {
  std::vector<uint8_t> bytes = read_file(path);
  if (bytes.size() >= 2 && bytes[0] == 0x1f && bytes[1] == 0x8b) return gunzip(bytes, path);
  return bytes;
}

IdxImages read_idx_images(const std::string& path) {
  std::vector<uint8_t> data = read_maybe_gzipped(path);
  const std::vector<uint32_t> dims = read_header(data, 3, path, "images (idx3-ubyte)");
  VT_CHECK(dims[1] > 0 && dims[2] > 0 && dims[1] <= (1u << 16) && dims[2] <= (1u << 16), path, ": invalid image size ", dims[2], "x",
           dims[1]);
  check_data_size(data, 16, dims[0], static_cast<uint64_t>(dims[1]) * dims[2], path);
  IdxImages out;
  out.count = dims[0];
  out.rows = static_cast<int>(dims[1]);
  out.cols = static_cast<int>(dims[2]);
  // Drop the header in place: no second 47 MB buffer.
  data.erase(data.begin(), data.begin() + 16);
  out.pixels = std::move(data);
  return out;
}

std::vector<uint8_t> read_idx_labels(const std::string& path) {
  std::vector<uint8_t> data = read_maybe_gzipped(path);
  const std::vector<uint32_t> dims = read_header(data, 1, path, "labels (idx1-ubyte)");
  check_data_size(data, 8, dims[0], 1, path);
  data.erase(data.begin(), data.begin() + 8);
  return data;
}

}  // namespace vt
