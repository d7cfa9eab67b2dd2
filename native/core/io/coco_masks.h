// COCO segmentation masks as pycocotools handles them (a port of maskApi.c): a COCO annotation's
// `segmentation` (polygons, uncompressed RLE or compressed RLE) to a run-length encoding and to a
// [H, W] mask, masks back to RLE, and the RLE area and IoU that COCOeval's 'segm' mode uses.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <torch/torch.h>
#include <nlohmann/json.hpp>

namespace vt {

// COCO's run-length encoding of a binary mask: the pixels in column-major order (down each column,
// then the next column), as alternating runs of 0s and 1s starting with 0s (a first run of 0 when
// the mask starts with a 1). The counts add up to height * width.
struct RleMask {
  int64_t height = 0;
  int64_t width = 0;
  std::vector<uint32_t> counts;
};

// maskApi.c's rleFrPoly: one polygon [x0, y0, x1, y1, ...] (pixel coordinates, an even count, not empty)
// rasterised as pycocotools does (edges traced at 5x resolution, a pixel is in when its centre is).
RleMask rle_from_polygon(const std::vector<double>& polygon, int64_t height, int64_t width);

// maskApi.c's rleFrBbox: a box [x, y, width, height] rasterised as its polygon.
RleMask rle_from_box(const std::vector<double>& box, int64_t height, int64_t width);

// Uncompressed RLE ({"counts": [...], "size": [h, w]}): the counts as they are; they must add up to
// height * width.
RleMask rle_from_counts(const std::vector<int64_t>& counts, int64_t height, int64_t width);

// maskApi.c's rleFrString: compressed RLE counts (6 bits a character, ASCII 48..111, each count a
// signed LEB128-like number, counts after the third stored as differences from the one two back).
RleMask rle_from_string(const std::string& counts, int64_t height, int64_t width);

// maskApi.c's rleToString: the compressed form of `rle.counts` (what pycocotools' encode gives).
std::string rle_to_string(const RleMask& rle);

// A COCO annotation's `segmentation` as COCO.annToRLE reads it for an image of height x width:
// a list of polygons (unioned; the first needs at least 3 points, as pycocotools' frPyObjects
// fails otherwise; an empty list gives an empty mask), or an RLE object whose
// `counts` is a list (uncompressed) or a string (compressed) and whose `size` must be [height, width].
RleMask rle_from_segmentation(const nlohmann::json& segmentation, int64_t height, int64_t width);

// COCO.annToMask: the decoded mask of rle_from_segmentation, [height, width] uint8 (0 or 1).
torch::Tensor decode_segmentation(const nlohmann::json& segmentation, int64_t height, int64_t width);

// maskApi.c's rleEncode: a [H, W] mask (bool or any integer dtype; non-zero is in) to RLE.
RleMask rle_encode(const torch::Tensor& mask);

// maskApi.c's rleDecode: [height, width] uint8 (0 or 1).
torch::Tensor rle_decode(const RleMask& rle);

// maskApi.c's rleMerge: the union (or, with `intersect`, the intersection) of masks of one size.
RleMask rle_merge(const std::vector<RleMask>& masks, bool intersect = false);

// maskApi.c's rleArea: the number of pixels in the mask.
uint64_t rle_area(const RleMask& rle);

// maskApi.c's rleIou for one pair: intersection over union, or over the detection's area when the
// ground truth is a crowd region; 0 when they do not overlap. Both must have one size.
double rle_iou(const RleMask& detection, const RleMask& ground_truth, bool ground_truth_is_crowd);

}  // namespace vt
