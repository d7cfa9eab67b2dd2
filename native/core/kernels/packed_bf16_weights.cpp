#include "kernels/packed_bf16_weights.h"

#include <ATen/Parallel.h>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "common/error.h"

namespace vt::kernels {

namespace {

#if defined(__x86_64__)

#define VT_AVX512_BF16 __attribute__((target("avx512f,avx512bw,avx512bf16")))

// GCC 12's AVX-512 unpack intrinsics pass an undefined vector as their (unused) merge source.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

// Transposes a 16x16 matrix of 32-bit elements held as 16 rows.
VT_AVX512_BF16 void transpose_16x16(__m512i r[16]) {
  __m512i t[16];
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {
    r[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
    r[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
    r[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
    r[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
  }
  for (int i = 0; i < 4; ++i) {
    t[i] = _mm512_shuffle_i32x4(r[i], r[i + 4], 0x88);
    t[i + 4] = _mm512_shuffle_i32x4(r[i], r[i + 4], 0xdd);
    t[i + 8] = _mm512_shuffle_i32x4(r[i + 8], r[i + 12], 0x88);
    t[i + 12] = _mm512_shuffle_i32x4(r[i + 8], r[i + 12], 0xdd);
  }
  for (int i = 0; i < 8; ++i) {
    r[i] = _mm512_shuffle_i32x4(t[i], t[i + 8], 0x88);
    r[i + 8] = _mm512_shuffle_i32x4(t[i], t[i + 8], 0xdd);
  }
}

// Rows [row_begin, row_end) of the weight (multiples of 16), 16 rows by 32 columns at a time.
VT_AVX512_BF16 void pack_rows(const float* weight, int64_t out_features, int64_t in_features, int64_t row_begin, int64_t row_end,
                              uint16_t* forward_operand, uint16_t* gradient_operand) {
  // 16-bit lane j of the result: lane j / 2 of a when j is even, of b when odd.
  alignas(64) uint16_t low_indices[32], high_indices[32];
  for (int j = 0; j < 32; ++j) {
    low_indices[j] = static_cast<uint16_t>(j / 2 + (j % 2) * 32);
    high_indices[j] = static_cast<uint16_t>(low_indices[j] + 16);
  }
  const __m512i interleave_low = _mm512_load_si512(low_indices), interleave_high = _mm512_load_si512(high_indices);
  __m512i rows[16];
  for (int64_t o0 = row_begin; o0 < row_end; o0 += 16) {
    for (int64_t i0 = 0; i0 < in_features; i0 += 32) {
      // Each row's 32 columns in bfloat16: 32-bit lane p holds columns (i0 + 2p, i0 + 2p + 1).
      for (int r = 0; r < 16; ++r) {
        const float* source = weight + (o0 + r) * in_features + i0;
        rows[r] = reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(_mm512_loadu_ps(source + 16), _mm512_loadu_ps(source)));
      }
      if (gradient_operand != nullptr) {
        // W as [out, in]: pairs of rows (o, o + 1) interleaved, 32 columns per row pair.
        for (int r = 0; r < 16; r += 2) {
          uint16_t* target = gradient_operand + packed_bf16_offset(o0 + r, i0, out_features);
          _mm512_storeu_si512(target, _mm512_permutex2var_epi16(rows[r], interleave_low, rows[r + 1]));
          _mm512_storeu_si512(target + 32, _mm512_permutex2var_epi16(rows[r], interleave_high, rows[r + 1]));
        }
      }
      // W^T as [in, out]: its row pairs are the column pairs above, 16 rows (its columns) each.
      transpose_16x16(rows);
      for (int p = 0; p < 16; ++p) {
        _mm512_storeu_si512(forward_operand + packed_bf16_offset(i0 + 2 * p, o0, in_features), rows[p]);
      }
    }
  }
}

#pragma GCC diagnostic pop

bool cpu_has_avx512_bf16() {
  static const bool has = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512bf16");
  return has;
}

#else

bool cpu_has_avx512_bf16() { return false; }

#endif

}  // namespace

bool bf16_weight_packing_applies(int64_t out_features, int64_t in_features) {
  return cpu_has_avx512_bf16() && out_features > 0 && in_features > 0 && out_features % 64 == 0 && in_features % 64 == 0;
}

void pack_bf16_weights(const float* weight, int64_t out_features, int64_t in_features, uint16_t* forward_operand,
                       uint16_t* gradient_operand) {
  VT_CHECK(bf16_weight_packing_applies(out_features, in_features), "bfloat16 weight packing does not apply to ", out_features, "x",
           in_features, " weights on this CPU");
#if defined(__x86_64__)
  // Tasks of 16 rows (a 64-row grain): each writes its own blocks of both operands.
  at::parallel_for(0, out_features / 16, 4, [&](int64_t begin, int64_t end) {
    pack_rows(weight, out_features, in_features, begin * 16, end * 16, forward_operand, gradient_operand);
  });
#endif
}

}  // namespace vt::kernels
