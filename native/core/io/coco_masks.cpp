// A port of the parts of pycocotools' maskApi.c that COCO annotations and COCOeval's 'segm' mode
// use. The polygon rasteriser keeps maskApi.c's integer and double arithmetic statement for
// statement (its casts, rounding by +.5 and truncation, unsigned sizes), because a pixel on a
// polygon's edge goes in or out on exactly those details.
#include "io/coco_masks.h"

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdlib>
#include <limits>

#include "common/error.h"

namespace vt {
namespace {

using siz = uint64_t;  // maskApi.h's siz (unsigned long)
using uint = uint32_t;

uint umin(uint a, uint b) { return a < b ? a : b; }
uint umax(uint a, uint b) { return a > b ? a : b; }

// C's (int) of a double as x86-64 computes it (cvttsd2si): truncation, and INT_MIN for NaN or
// values out of range, which maskApi.c meets on a polygon edge of length 0 (0/0).
int c_int(double value) {
  if (!(value > -2147483649.0 && value < 2147483648.0)) return INT_MIN;
  return static_cast<int>(value);
}

void check_size(int64_t height, int64_t width, const char* what) {
  VT_CHECK(height >= 0 && width >= 0, what, ": mask size must not be negative, got ", height, "x", width);
  VT_CHECK(static_cast<uint64_t>(height) * static_cast<uint64_t>(width) <= std::numeric_limits<uint>::max(), what, ": mask size ", height,
           "x", width, " has more pixels than COCO's 32-bit run lengths hold");
}

uint64_t counts_sum(const std::vector<uint32_t>& counts) {
  uint64_t sum = 0;
  for (uint32_t count : counts) sum += count;
  return sum;
}

void check_counts_cover(const RleMask& rle, const char* what) {
  const uint64_t sum = counts_sum(rle.counts);
  const uint64_t pixels = static_cast<uint64_t>(rle.height) * static_cast<uint64_t>(rle.width);
  VT_CHECK(sum == pixels, what, ": RLE counts add up to ", sum, " but the mask is ", rle.height, "x", rle.width, " = ", pixels, " pixels");
}

// maskApi.c reads cnts[0] even for an RLE without counts; an empty list means one empty run.
const std::vector<uint32_t>& runs_of(const RleMask& rle) {
  static const std::vector<uint32_t> kNoPixels = {0};
  return rle.counts.empty() ? kNoPixels : rle.counts;
}

// rleFrPoly for k points xy[0..2k).
RleMask rasterise_polygon(const double* xy, siz k, siz h, siz w) {
  // Upsample and get discrete points densely along the entire boundary.
  const double scale = 5;
  std::vector<int> x(k + 1), y(k + 1);
  for (siz j = 0; j < k; j++) x[j] = c_int(scale * xy[j * 2 + 0] + .5);
  x[k] = x[0];
  for (siz j = 0; j < k; j++) y[j] = c_int(scale * xy[j * 2 + 1] + .5);
  y[k] = y[0];
  siz m = 0;
  for (siz j = 0; j < k; j++) m += umax(std::abs(x[j] - x[j + 1]), std::abs(y[j] - y[j + 1])) + 1;
  std::vector<int> u(m), v(m);
  m = 0;
  for (siz j = 0; j < k; j++) {
    int xs = x[j], xe = x[j + 1], ys = y[j], ye = y[j + 1];
    const int dx = std::abs(xe - xs), dy = std::abs(ys - ye);
    const bool flip = (dx >= dy && xs > xe) || (dx < dy && ys > ye);
    if (flip) {
      std::swap(xs, xe);
      std::swap(ys, ye);
    }
    const double s = dx >= dy ? static_cast<double>(ye - ys) / dx : static_cast<double>(xe - xs) / dy;
    if (dx >= dy) {
      for (int d = 0; d <= dx; d++) {
        const int t = flip ? dx - d : d;
        u[m] = t + xs;
        v[m] = c_int(ys + s * t + .5);
        m++;
      }
    } else {
      for (int d = 0; d <= dy; d++) {
        const int t = flip ? dy - d : d;
        v[m] = t + ys;
        u[m] = c_int(xs + s * t + .5);
        m++;
      }
    }
  }
  // Get points along the y-boundary and downsample.
  k = m;
  m = 0;
  x.assign(k, 0);
  y.assign(k, 0);
  for (siz j = 1; j < k; j++) {
    if (u[j] == u[j - 1]) continue;
    double xd = static_cast<double>(u[j] < u[j - 1] ? u[j] : u[j] - 1);
    xd = (xd + .5) / scale - .5;
    if (std::floor(xd) != xd || xd < 0 || xd > static_cast<double>(w - 1)) continue;
    double yd = static_cast<double>(v[j] < v[j - 1] ? v[j] : v[j - 1]);
    yd = (yd + .5) / scale - .5;
    if (yd < 0) {
      yd = 0;
    } else if (yd > static_cast<double>(h)) {
      yd = static_cast<double>(h);
    }
    yd = std::ceil(yd);
    x[m] = c_int(xd);
    y[m] = c_int(yd);
    m++;
  }
  // Compute the RLE given the y-boundary points: sorted column-major positions, as differences.
  k = m;
  std::vector<uint> a(k + 1);
  for (siz j = 0; j < k; j++) a[j] = static_cast<uint>(x[j] * static_cast<int>(h) + y[j]);
  a[k++] = static_cast<uint>(h * w);
  std::sort(a.begin(), a.end());
  uint p = 0;
  for (siz j = 0; j < k; j++) {
    const uint t = a[j];
    a[j] -= p;
    p = t;
  }
  // Runs of length 0 merge their neighbours.
  std::vector<uint> b;
  b.reserve(k);
  siz j = 0;
  b.push_back(a[j++]);
  while (j < k) {
    if (a[j] > 0) {
      b.push_back(a[j++]);
    } else {
      j++;
      if (j < k) b.back() += a[j++];
    }
  }
  RleMask rle;
  rle.height = static_cast<int64_t>(h);
  rle.width = static_cast<int64_t>(w);
  rle.counts = std::move(b);
  return rle;
}

void check_coordinates(const std::vector<double>& values, const char* what) {
  for (size_t i = 0; i < values.size(); ++i) {
    // Beyond this, maskApi.c's int arithmetic at 5x resolution overflows.
    VT_CHECK(std::isfinite(values[i]) && std::fabs(values[i]) < 4e8, what, ": coordinate ", i, " is ", values[i],
             ", not a finite pixel coordinate");
  }
}

std::vector<double> numbers_of(const nlohmann::json& value, const std::string& what) {
  VT_CHECK(value.is_array(), what, " must be a list of numbers, got ", value.type_name());
  std::vector<double> numbers;
  numbers.reserve(value.size());
  for (size_t i = 0; i < value.size(); ++i) {
    VT_CHECK(value[i].is_number(), what, "[", i, "] must be a number, got ", value[i].type_name());
    numbers.push_back(value[i].get<double>());
  }
  return numbers;
}

}  // namespace

RleMask rle_from_polygon(const std::vector<double>& polygon, int64_t height, int64_t width) {
  check_size(height, width, "rle_from_polygon");
  VT_CHECK(polygon.size() % 2 == 0, "rle_from_polygon: a polygon needs an even number of coordinates (x, y pairs), got ", polygon.size());
  VT_CHECK(!polygon.empty(), "rle_from_polygon: the polygon has no points");
  check_coordinates(polygon, "rle_from_polygon");
  return rasterise_polygon(polygon.data(), polygon.size() / 2, static_cast<siz>(height), static_cast<siz>(width));
}

RleMask rle_from_box(const std::vector<double>& box, int64_t height, int64_t width) {
  check_size(height, width, "rle_from_box");
  VT_CHECK(box.size() == 4, "rle_from_box: a box is [x, y, width, height], got ", box.size(), " numbers");
  check_coordinates(box, "rle_from_box");
  const double xs = box[0], xe = xs + box[2];
  const double ys = box[1], ye = ys + box[3];
  const double xy[8] = {xs, ys, xs, ye, xe, ye, xe, ys};
  return rasterise_polygon(xy, 4, static_cast<siz>(height), static_cast<siz>(width));
}

RleMask rle_from_counts(const std::vector<int64_t>& counts, int64_t height, int64_t width) {
  check_size(height, width, "rle_from_counts");
  RleMask rle;
  rle.height = height;
  rle.width = width;
  rle.counts.reserve(counts.size());
  for (size_t i = 0; i < counts.size(); ++i) {
    VT_CHECK(counts[i] >= 0 && counts[i] <= std::numeric_limits<uint>::max(), "rle_from_counts: RLE count ", i, " is ", counts[i],
             ", outside [0, 2^32)");
    rle.counts.push_back(static_cast<uint>(counts[i]));
  }
  check_counts_cover(rle, "rle_from_counts");
  return rle;
}

RleMask rle_from_string(const std::string& s, int64_t height, int64_t width) {
  check_size(height, width, "rle_from_string");
  RleMask rle;
  rle.height = height;
  rle.width = width;
  size_t p = 0;
  while (p < s.size()) {
    int64_t x = 0;
    int k = 0;
    bool more = true;
    while (more) {
      VT_CHECK(p < s.size(), "rle_from_string: compressed RLE counts end inside a number (at character ", p, ")");
      VT_CHECK(s[p] >= 48 && s[p] <= 111, "rle_from_string: character ", p, " of the compressed RLE counts is '", s[p],
               "', outside '0'..'o'");
      VT_CHECK(k < 7, "rle_from_string: a number in the compressed RLE counts is too long (at character ", p, ")");
      const int c = s[p] - 48;
      x |= static_cast<int64_t>(c & 0x1f) << 5 * k;
      more = (c & 0x20) != 0;
      p++;
      k++;
      if (!more && (c & 0x10)) x |= static_cast<int64_t>(-1) * (int64_t{1} << 5 * k);  // sign extension
    }
    const size_t m = rle.counts.size();
    if (m > 2) x += static_cast<int64_t>(rle.counts[m - 2]);
    VT_CHECK(x >= 0 && x <= std::numeric_limits<uint>::max(), "rle_from_string: RLE count ", m, " decodes to ", x, ", outside [0, 2^32)");
    rle.counts.push_back(static_cast<uint>(x));
  }
  check_counts_cover(rle, "rle_from_string");
  return rle;
}

std::string rle_to_string(const RleMask& rle) {
  std::string s;
  for (size_t i = 0; i < rle.counts.size(); i++) {
    int64_t x = static_cast<int64_t>(rle.counts[i]);
    if (i > 2) x -= static_cast<int64_t>(rle.counts[i - 2]);
    bool more = true;
    while (more) {
      char c = static_cast<char>(x & 0x1f);
      x >>= 5;  // arithmetic shift, as for maskApi.c's long
      more = (c & 0x10) ? x != -1 : x != 0;
      if (more) c |= 0x20;
      c += 48;
      s.push_back(c);
    }
  }
  return s;
}

RleMask rle_from_segmentation(const nlohmann::json& segmentation, int64_t height, int64_t width) {
  check_size(height, width, "segmentation");
  if (segmentation.is_array()) {
    if (segmentation.empty()) return rle_from_counts({height * width}, height, width);
    // pycocotools' frPyObjects reads a list whose first entry has 4 numbers as boxes, which then
    // fails (frBbox takes no list), and fewer than 4 as unsupported: the first polygon needs 3 points.
    VT_CHECK(segmentation[0].is_array() && segmentation[0].size() > 4,
             "segmentation: polygon 0 must have at least 3 points (6 numbers), got ",
             segmentation[0].is_array() ? std::to_string(segmentation[0].size()) + " numbers" : std::string(segmentation[0].type_name()));
    std::vector<RleMask> parts;
    for (size_t i = 0; i < segmentation.size(); ++i) {
      const std::string what = "segmentation: polygon " + std::to_string(i);
      const std::vector<double> values = numbers_of(segmentation[i], what);
      VT_CHECK(values.size() % 2 == 0 && !values.empty(), what, " has ", values.size(),
               " coordinates; a polygon needs an even number (x, y pairs)");
      check_coordinates(values, what.c_str());
      parts.push_back(rasterise_polygon(values.data(), values.size() / 2, static_cast<siz>(height), static_cast<siz>(width)));
    }
    return rle_merge(parts);
  }
  VT_CHECK(segmentation.is_object(), "segmentation must be a list of polygons or an RLE object, got ", segmentation.type_name());
  VT_CHECK(segmentation.contains("counts") && segmentation.contains("size"), "segmentation: an RLE object needs `counts` and `size`");
  const std::vector<double> size = numbers_of(segmentation["size"], "segmentation: size");
  VT_CHECK(size.size() == 2, "segmentation: size must be [height, width], got ", size.size(), " numbers");
  VT_CHECK(size[0] == static_cast<double>(height) && size[1] == static_cast<double>(width), "segmentation: RLE size [", size[0], ", ",
           size[1], "] differs from the image's ", height, "x", width);
  const nlohmann::json& counts = segmentation["counts"];
  if (counts.is_string()) return rle_from_string(counts.get<std::string>(), height, width);
  const std::vector<double> values = numbers_of(counts, "segmentation: counts");
  std::vector<int64_t> integers;
  integers.reserve(values.size());
  for (size_t i = 0; i < values.size(); ++i) {
    VT_CHECK(values[i] == std::floor(values[i]) && std::fabs(values[i]) < 9e18, "segmentation: counts[", i, "] is ", values[i],
             ", not an integer");
    integers.push_back(static_cast<int64_t>(values[i]));
  }
  return rle_from_counts(integers, height, width);
}

torch::Tensor decode_segmentation(const nlohmann::json& segmentation, int64_t height, int64_t width) {
  return rle_decode(rle_from_segmentation(segmentation, height, width));
}

RleMask rle_encode(const torch::Tensor& mask) {
  VT_CHECK(mask.defined() && mask.dim() == 2, "rle_encode: the mask must be [H, W], got ",
           mask.defined() ? std::to_string(mask.dim()) + " dimensions" : std::string("an undefined tensor"));
  VT_CHECK(!at::isFloatingType(mask.scalar_type()) && !at::isComplexType(mask.scalar_type()),
           "rle_encode: the mask must be bool or integer, got ", mask.scalar_type());
  RleMask rle;
  rle.height = mask.size(0);
  rle.width = mask.size(1);
  check_size(rle.height, rle.width, "rle_encode");
  // Column-major order: the transpose's rows are the mask's columns.
  const torch::Tensor columns = mask.to(torch::kCPU).ne(0).to(torch::kUInt8).t().contiguous();
  const uint8_t* pixels = columns.data_ptr<uint8_t>();
  const int64_t area = rle.height * rle.width;
  uint8_t previous = 0;
  uint count = 0;
  for (int64_t j = 0; j < area; ++j) {
    if (pixels[j] != previous) {
      rle.counts.push_back(count);
      count = 0;
      previous = pixels[j];
    }
    count++;
  }
  rle.counts.push_back(count);
  return rle;
}

torch::Tensor rle_decode(const RleMask& rle) {
  check_size(rle.height, rle.width, "rle_decode");
  check_counts_cover(rle, "rle_decode");
  torch::Tensor columns = torch::empty({rle.width, rle.height}, torch::kUInt8);
  uint8_t* out = columns.data_ptr<uint8_t>();
  uint8_t value = 0;
  for (uint32_t count : rle.counts) {
    std::fill(out, out + count, value);
    out += count;
    value = !value;
  }
  return columns.t().contiguous();
}

RleMask rle_merge(const std::vector<RleMask>& masks, bool intersect) {
  if (masks.empty()) return RleMask{};
  const int64_t h = masks[0].height, w = masks[0].width;
  for (size_t i = 1; i < masks.size(); ++i) {
    VT_CHECK(masks[i].height == h && masks[i].width == w, "rle_merge: mask ", i, " is ", masks[i].height, "x", masks[i].width,
             " but mask 0 is ", h, "x", w);
  }
  std::vector<uint> cnts = masks[0].counts;
  for (size_t i = 1; i < masks.size(); ++i) {
    const std::vector<uint> A = cnts.empty() ? std::vector<uint>{0} : cnts;
    const std::vector<uint>& B = runs_of(masks[i]);
    uint ca = A[0], cb = B[0], cc = 0, ct = 1;
    bool v = false, va = false, vb = false;
    size_t a = 1, b = 1;
    cnts.clear();
    while (ct > 0) {
      const uint c = umin(ca, cb);
      cc += c;
      ct = 0;
      ca -= c;
      if (!ca && a < A.size()) {
        ca = A[a++];
        va = !va;
      }
      ct += ca;
      cb -= c;
      if (!cb && b < B.size()) {
        cb = B[b++];
        vb = !vb;
      }
      ct += cb;
      const bool vp = v;
      v = intersect ? (va && vb) : (va || vb);
      if (v != vp || ct == 0) {
        cnts.push_back(cc);
        cc = 0;
      }
    }
  }
  RleMask merged;
  merged.height = h;
  merged.width = w;
  merged.counts = std::move(cnts);
  return merged;
}

uint64_t rle_area(const RleMask& rle) {
  uint64_t area = 0;
  for (size_t j = 1; j < rle.counts.size(); j += 2) area += rle.counts[j];
  return area;
}

double rle_iou(const RleMask& detection, const RleMask& ground_truth, bool ground_truth_is_crowd) {
  VT_CHECK(detection.height == ground_truth.height && detection.width == ground_truth.width, "rle_iou: the detection is ", detection.height,
           "x", detection.width, " but the ground truth is ", ground_truth.height, "x", ground_truth.width);
  // maskApi.c first skips pairs whose boxes do not overlap; their masks cannot overlap either, and
  // both ways give 0, so the walk below alone gives its numbers.
  const std::vector<uint>& dt = runs_of(detection);
  const std::vector<uint>& gt = runs_of(ground_truth);
  uint ca = dt[0], cb = gt[0], ct = 1;
  uint64_t i = 0, u = 0;
  bool va = false, vb = false;
  size_t a = 1, b = 1;
  while (ct > 0) {
    const uint c = umin(ca, cb);
    if (va || vb) {
      u += c;
      if (va && vb) i += c;
    }
    ct = 0;
    ca -= c;
    if (!ca && a < dt.size()) {
      ca = dt[a++];
      va = !va;
    }
    ct += ca;
    cb -= c;
    if (!cb && b < gt.size()) {
      cb = gt[b++];
      vb = !vb;
    }
    ct += cb;
  }
  if (i == 0) {
    u = 1;
  } else if (ground_truth_is_crowd) {
    u = rle_area(detection);
  }
  return static_cast<double>(i) / static_cast<double>(u);
}

}  // namespace vt
