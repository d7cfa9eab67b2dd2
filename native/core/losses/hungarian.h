// Exact minimum-cost assignment (the Hungarian problem), as scipy.optimize.linear_sum_assignment
// computes it for DETR's matcher: every row of a rectangular cost matrix is matched to a distinct
// column, or every column to a distinct row when there are fewer columns.
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

#include <torch/torch.h>

namespace vt {

// `cost`: [rows, cols], any floating dtype, CPU or not (copied to CPU float64). Returns min(rows,
// cols) (row, col) pairs sorted by row, minimising the total cost; empty for an empty matrix.
// Throws vt::Error for non-2-D input or non-finite costs (naming the first one found).
std::vector<std::pair<int64_t, int64_t>> linear_sum_assignment(const torch::Tensor& cost);

}  // namespace vt
