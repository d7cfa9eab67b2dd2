// A float32 linear layer's weights converted to bfloat16 and packed, in one pass, for both of
// the products that read them in training: the forward one (operand W^T, [in, out]) and the
// input-gradient one (operand W, [out, in]). The layout is the one oneDNN's AMX matmul chooses
// for such operands, written "BA16a64b2a" for a [K, N] operand: 64-column by 32-row blocks,
// each 16 row pairs of 64 (row, row + 1) pairs; blocks ordered by column block, then row block.
// Reading its operands packed, the kernel ran in 60-70% of the time it took reading them plain,
// and oneDNN's own reorder into that layout made two slower passes over the float32 weights.
#pragma once

#include <cstdint>

namespace vt::kernels {

// Where pack_bf16_weights runs: a CPU with AVX-512 BF16, and both dimensions multiples of 64.
bool bf16_weight_packing_applies(int64_t out_features, int64_t in_features);

// Offset, in bfloat16 elements, of element (row, column) of a [rows, columns] operand packed as
// above (rows a multiple of 32, columns of 64).
inline int64_t packed_bf16_offset(int64_t row, int64_t column, int64_t rows) {
  return (column / 64) * rows * 64 + (row / 32) * 2048 + ((row % 32) / 2) * 128 + (column % 64) * 2 + row % 2;
}

// weight: contiguous float32 [out, in]. forward_operand receives W^T ([in, out]) packed and
// gradient_operand W ([out, in]) packed, out * in bfloat16 elements each; gradient_operand may
// be null. Rounds to nearest even, as torch's conversion does.
void pack_bf16_weights(const float* weight, int64_t out_features, int64_t in_features, uint16_t* forward_operand,
                       uint16_t* gradient_operand);

}  // namespace vt::kernels
