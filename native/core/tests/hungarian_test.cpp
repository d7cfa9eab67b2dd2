// linear_sum_assignment against brute force on every shape up to 8x8 (square and rectangular,
// real costs and integer costs full of ties), a known answer, empty matrices, input errors, and a
// 300x300 problem (DETR's 100 queries x targets is far smaller) for speed.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <random>
#include <set>
#include <utility>
#include <vector>

#include "losses/hungarian.h"
#include "test_util.h"

namespace {

using Matrix = std::vector<std::vector<double>>;
using Pairs = std::vector<std::pair<int64_t, int64_t>>;

torch::Tensor to_tensor(const Matrix& cost, int64_t rows, int64_t cols) {
  torch::Tensor tensor = torch::zeros({rows, cols}, torch::kFloat64);
  auto access = tensor.accessor<double, 2>();
  for (int64_t i = 0; i < rows; ++i) {
    for (int64_t j = 0; j < cols; ++j) access[i][j] = cost[i][j];
  }
  return tensor;
}

// Minimum over every injection of the smaller side into the larger one.
double brute_force(const Matrix& cost, int64_t rows, int64_t cols) {
  const bool wide = rows <= cols;
  const int64_t small = wide ? rows : cols, large = wide ? cols : rows;
  std::vector<char> used(large, 0);
  double best = std::numeric_limits<double>::infinity();
  std::vector<double> partial(small + 1, 0.0);
  // Depth-first over positions of the smaller side.
  std::function<void(int64_t)> visit = [&](int64_t depth) {
    if (depth == small) {
      best = std::min(best, partial[depth]);
      return;
    }
    for (int64_t other = 0; other < large; ++other) {
      if (used[other]) continue;
      used[other] = 1;
      partial[depth + 1] = partial[depth] + (wide ? cost[depth][other] : cost[other][depth]);
      visit(depth + 1);
      used[other] = 0;
    }
  };
  visit(0);
  return best;
}

// The pairs must be sorted by row, use each row and column at most once, and number min(rows, cols).
double checked_cost(const Pairs& pairs, const Matrix& cost, int64_t rows, int64_t cols) {
  EXPECT_EQ(static_cast<int64_t>(pairs.size()), std::min(rows, cols));
  std::set<int64_t> seen_rows, seen_cols;
  double total = 0;
  for (size_t k = 0; k < pairs.size(); ++k) {
    const auto [row, col] = pairs[k];
    EXPECT_TRUE(row >= 0 && row < rows && col >= 0 && col < cols) << "pair (" << row << ", " << col << ")";
    if (row < 0 || row >= rows || col < 0 || col >= cols) return std::numeric_limits<double>::quiet_NaN();
    if (k > 0) {
      EXPECT_LT(pairs[k - 1].first, row) << "pairs not sorted by row";
    }
    EXPECT_TRUE(seen_rows.insert(row).second) << "row " << row << " used twice";
    EXPECT_TRUE(seen_cols.insert(col).second) << "column " << col << " used twice";
    total += cost[row][col];
  }
  return total;
}

Matrix random_matrix(std::mt19937_64& rng, int64_t rows, int64_t cols, bool integer_ties) {
  std::uniform_real_distribution<double> real(-5.0, 20.0);
  std::uniform_int_distribution<int> small_int(0, 3);
  Matrix cost(rows, std::vector<double>(cols));
  for (auto& row : cost) {
    for (double& value : row) value = integer_ties ? small_int(rng) : real(rng);
  }
  return cost;
}

TEST(Hungarian, MatchesBruteForceOnEveryShapeUpTo8x8) {
  std::mt19937_64 rng(20240611);
  for (int64_t rows = 1; rows <= 8; ++rows) {
    for (int64_t cols = 1; cols <= 8; ++cols) {
      for (int trial = 0; trial < 6; ++trial) {
        const bool ties = trial % 2 == 1;
        const Matrix cost = random_matrix(rng, rows, cols, ties);
        const Pairs pairs = vt::linear_sum_assignment(to_tensor(cost, rows, cols));
        const double total = checked_cost(pairs, cost, rows, cols);
        const double optimum = brute_force(cost, rows, cols);
        if (ties) {
          EXPECT_EQ(total, optimum) << rows << "x" << cols << " trial " << trial;
        } else {
          EXPECT_NEAR(total, optimum, 1e-9) << rows << "x" << cols << " trial " << trial;
        }
      }
    }
  }
}

TEST(Hungarian, KnownExample) {
  // scipy.optimize.linear_sum_assignment's documented example: rows 0, 1, 2 -> columns 1, 0, 2,
  // total 1 + 2 + 2 = 5 (the unique optimum).
  const torch::Tensor cost = torch::tensor({{4.0, 1.0, 3.0}, {2.0, 0.0, 5.0}, {3.0, 2.0, 2.0}});
  EXPECT_EQ(vt::linear_sum_assignment(cost), (Pairs{{0, 1}, {1, 0}, {2, 2}}));

  // More rows than columns: every column gets its cheapest distinct row, row 2 stays unmatched.
  const torch::Tensor tall = torch::tensor({{1.0, 10.0}, {10.0, 1.0}, {5.0, 5.0}});
  EXPECT_EQ(vt::linear_sum_assignment(tall), (Pairs{{0, 0}, {1, 1}}));
  // Its transpose: more columns than rows.
  EXPECT_EQ(vt::linear_sum_assignment(tall.t()), (Pairs{{0, 0}, {1, 1}}));

  // The greedy choice (row 0 -> column 0, cost 1) is wrong here: optimum 2 + 2 = 4 < 1 + 100.
  const torch::Tensor trap = torch::tensor({{1.0, 2.0}, {2.0, 100.0}});
  EXPECT_EQ(vt::linear_sum_assignment(trap), (Pairs{{0, 1}, {1, 0}}));
}

TEST(Hungarian, AcceptsOtherDtypesAndLayouts) {
  // float32 as DETR's matcher produces, a non-contiguous view, and an integer matrix.
  const torch::Tensor cost = torch::tensor({{4.0f, 1.0f, 3.0f}, {2.0f, 0.0f, 5.0f}, {3.0f, 2.0f, 2.0f}});
  EXPECT_EQ(vt::linear_sum_assignment(cost), (Pairs{{0, 1}, {1, 0}, {2, 2}}));
  EXPECT_EQ(vt::linear_sum_assignment(cost.t()), (Pairs{{0, 1}, {1, 0}, {2, 2}}));
  EXPECT_EQ(vt::linear_sum_assignment(cost.to(torch::kInt64)), (Pairs{{0, 1}, {1, 0}, {2, 2}}));
  EXPECT_EQ(vt::linear_sum_assignment(torch::tensor({{7.5}})), (Pairs{{0, 0}}));
}

TEST(Hungarian, EmptyMatricesGiveNoPairs) {
  EXPECT_TRUE(vt::linear_sum_assignment(torch::zeros({0, 0})).empty());
  EXPECT_TRUE(vt::linear_sum_assignment(torch::zeros({0, 5})).empty());
  EXPECT_TRUE(vt::linear_sum_assignment(torch::zeros({5, 0})).empty());
}

TEST(Hungarian, RejectsBadInput) {
  vt_test::expect_error([] { vt::linear_sum_assignment(torch::zeros({3})); }, {"2-D", "1-D"});
  vt_test::expect_error([] { vt::linear_sum_assignment(torch::zeros({2, 2, 2})); }, {"2-D", "3-D"});
  vt_test::expect_error([] { vt::linear_sum_assignment(torch::Tensor()); }, {"undefined"});

  torch::Tensor nan_cost = torch::zeros({3, 4});
  nan_cost[1][2] = std::numeric_limits<float>::quiet_NaN();
  vt_test::expect_error([&] { vt::linear_sum_assignment(nan_cost); }, {"cost[1][2]", "nan", "finite"});
  torch::Tensor inf_cost = torch::zeros({4, 2});
  inf_cost[3][0] = std::numeric_limits<float>::infinity();
  vt_test::expect_error([&] { vt::linear_sum_assignment(inf_cost); }, {"cost[3][0]", "inf"});
  inf_cost[3][0] = -std::numeric_limits<float>::infinity();
  vt_test::expect_error([&] { vt::linear_sum_assignment(inf_cost); }, {"cost[3][0]", "-inf"});
}

TEST(Hungarian, Solves300x300WithoutAnImprovingSwapAndBeatsGreedy) {
  torch::manual_seed(7);
  const int64_t n = 300;
  const torch::Tensor cost = torch::rand({n, n}, torch::kFloat64);
  const Pairs pairs = vt::linear_sum_assignment(cost);

  Matrix matrix(n, std::vector<double>(n));
  auto access = cost.accessor<double, 2>();
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < n; ++j) matrix[i][j] = access[i][j];
  }
  const double total = checked_cost(pairs, matrix, n, n);
  // Greedy: each row in turn takes its cheapest free column.
  std::vector<char> taken(n, 0);
  double greedy = 0;
  for (int64_t i = 0; i < n; ++i) {
    int64_t best = -1;
    for (int64_t j = 0; j < n; ++j) {
      if (!taken[j] && (best < 0 || matrix[i][j] < matrix[i][best])) best = j;
    }
    taken[best] = 1;
    greedy += matrix[i][best];
  }
  EXPECT_LE(total, greedy);
  // An optimum admits no exchange of columns between two rows that lowers the total.
  int64_t improving_swaps = 0;
  for (int64_t a = 0; a < n; ++a) {
    for (int64_t b = a + 1; b < n; ++b) {
      const int64_t col_a = pairs[a].second, col_b = pairs[b].second;
      if (matrix[a][col_b] + matrix[b][col_a] < matrix[a][col_a] + matrix[b][col_b] - 1e-12) ++improving_swaps;
    }
  }
  EXPECT_EQ(improving_swaps, 0);
  // Uniform costs: the optimum is known to approach pi^2/6 ~ 1.64 as n grows; greedy is far worse.
  EXPECT_LT(total, 3.0);
}

}  // namespace
