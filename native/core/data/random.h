// The data pipeline's randomness, defined here rather than by the standard library's
// distributions (whose algorithms differ between implementations): the same seed gives the same
// split, order and augmentation everywhere. std::mt19937_64's output is fixed by the standard.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <random>
#include <utility>
#include <vector>

namespace vt {

// splitmix64's finaliser: a bijective, well-mixed hash of one 64-bit word.
inline uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// A seed derived from several values; each step is mixed so that (a, b) and (b, a) differ.
inline uint64_t mix_seed(uint64_t a, uint64_t b) { return splitmix64(splitmix64(a) ^ b); }
inline uint64_t mix_seed(uint64_t a, uint64_t b, uint64_t c) { return mix_seed(mix_seed(a, b), c); }

// Uniform integer in [0, bound), without modulo bias (bound > 0).
inline uint64_t uniform_below(std::mt19937_64& rng, uint64_t bound) {
  const uint64_t threshold = (0 - bound) % bound;  // 2^64 mod bound: reject the uneven tail
  while (true) {
    const uint64_t r = rng();
    if (r >= threshold) return r % bound;
  }
}

// Uniform double in [0, 1) from the top 53 bits.
inline double uniform01(std::mt19937_64& rng) { return static_cast<double>(rng() >> 11) * 0x1.0p-53; }

// Fisher-Yates (Durstenfeld), from the back.
template <typename T>
void seeded_shuffle(std::vector<T>& items, std::mt19937_64& rng) {
  for (size_t i = items.size(); i > 1; --i) {
    const size_t j = static_cast<size_t>(uniform_below(rng, i));
    std::swap(items[i - 1], items[j]);
  }
}

// The held-out split of n samples, as datasets' train_test_split does it: ceil(fraction * n)
// samples go to validation, taken from the front of a permutation seeded by `seed`; both parts
// keep the shuffled order. Every dataset kind splits through this, so a seed means one split.
struct SplitIndices {
  std::vector<size_t> train, validation;
};
inline SplitIndices seeded_split(size_t n, double fraction, uint64_t seed) {
  const size_t n_val = static_cast<size_t>(std::ceil(fraction * static_cast<double>(n)));
  std::vector<size_t> order(n);
  for (size_t i = 0; i < n; ++i) order[i] = i;
  std::mt19937_64 rng(seed);
  seeded_shuffle(order, rng);
  SplitIndices out;
  out.validation.assign(order.begin(), order.begin() + std::min(n_val, n));
  out.train.assign(order.begin() + std::min(n_val, n), order.end());
  return out;
}

}  // namespace vt
