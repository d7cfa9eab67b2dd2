// Shortest augmenting paths with dual potentials (the Hungarian method in its O(n^2 m) form, the
// family scipy's solver belongs to): rows are added one at a time, each by a Dijkstra-like search
// over columns on reduced costs; the potentials keep every partial assignment optimal.
#include "losses/hungarian.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "common/error.h"

namespace vt {
namespace {

// Solves rows <= cols on a row-major cost; returns, for each row, its column.
std::vector<int64_t> solve_wide(const double* cost, int64_t rows, int64_t cols) {
  const double inf = std::numeric_limits<double>::infinity();
  // 1-based as in the classic formulation: column 0 is a virtual column that holds the row being
  // inserted, so the augmenting path always ends there.
  std::vector<double> u(rows + 1, 0.0), v(cols + 1, 0.0), min_slack(cols + 1);
  std::vector<int64_t> row_of(cols + 1, 0), previous(cols + 1, 0);
  std::vector<char> visited(cols + 1);
  for (int64_t i = 1; i <= rows; ++i) {
    row_of[0] = i;
    int64_t j0 = 0;
    std::fill(min_slack.begin(), min_slack.end(), inf);
    std::fill(visited.begin(), visited.end(), 0);
    do {
      visited[j0] = 1;
      const int64_t i0 = row_of[j0];
      const double* cost_row = cost + (i0 - 1) * cols;
      double delta = inf;
      int64_t j1 = -1;
      for (int64_t j = 1; j <= cols; ++j) {
        if (visited[j]) continue;
        const double reduced = cost_row[j - 1] - u[i0] - v[j];
        if (reduced < min_slack[j]) {
          min_slack[j] = reduced;
          previous[j] = j0;
        }
        if (min_slack[j] < delta) {
          delta = min_slack[j];
          j1 = j;
        }
      }
      // Finite inputs keep every reduced cost finite unless they are near DBL_MAX, where
      // differences overflow.
      VT_CHECK(j1 >= 0, "linear_sum_assignment: costs too large in magnitude to solve in double precision");
      for (int64_t j = 0; j <= cols; ++j) {
        if (visited[j]) {
          u[row_of[j]] += delta;
          v[j] -= delta;
        } else {
          min_slack[j] -= delta;
        }
      }
      j0 = j1;
    } while (row_of[j0] != 0);
    // Flip the alternating path back to the virtual column.
    do {
      const int64_t j1 = previous[j0];
      row_of[j0] = row_of[j1];
      j0 = j1;
    } while (j0 != 0);
  }
  std::vector<int64_t> column_of(rows, -1);
  for (int64_t j = 1; j <= cols; ++j) {
    if (row_of[j] != 0) column_of[row_of[j] - 1] = j - 1;
  }
  return column_of;
}

}  // namespace

std::vector<std::pair<int64_t, int64_t>> linear_sum_assignment(const torch::Tensor& cost) {
  VT_CHECK(cost.defined(), "linear_sum_assignment: the cost matrix is undefined");
  VT_CHECK(cost.dim() == 2, "linear_sum_assignment: the cost matrix must be 2-D, got ", cost.dim(), "-D ", cost.sizes());
  VT_CHECK(!cost.is_complex() && cost.scalar_type() != torch::kBool, "linear_sum_assignment: the cost matrix must be real-valued, got ",
           cost.scalar_type());
  const int64_t rows = cost.size(0), cols = cost.size(1);
  if (rows == 0 || cols == 0) return {};

  const torch::Tensor matrix = cost.detach().to(torch::kCPU, torch::kFloat64).contiguous();
  const double* data = matrix.data_ptr<double>();
  for (int64_t i = 0; i < rows; ++i) {
    for (int64_t j = 0; j < cols; ++j) {
      const double value = data[i * cols + j];
      // scipy reads +inf as a forbidden pair; DETR's costs are always finite, so a non-finite
      // entry means a broken cost computation upstream.
      VT_CHECK(std::isfinite(value), "linear_sum_assignment: cost[", i, "][", j, "] is ", value, "; every cost must be finite");
    }
  }

  std::vector<std::pair<int64_t, int64_t>> pairs;
  if (rows <= cols) {
    const std::vector<int64_t> column_of = solve_wide(data, rows, cols);
    for (int64_t i = 0; i < rows; ++i) pairs.emplace_back(i, column_of[i]);
  } else {
    // More rows than columns: assign every column to a row on the transposed matrix.
    const torch::Tensor transposed = matrix.t().contiguous();
    const std::vector<int64_t> row_of = solve_wide(transposed.data_ptr<double>(), cols, rows);
    for (int64_t j = 0; j < cols; ++j) pairs.emplace_back(row_of[j], j);
    std::sort(pairs.begin(), pairs.end());
  }
  return pairs;
}

}  // namespace vt
