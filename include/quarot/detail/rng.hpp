#pragma once
// The project's deterministic PRNG (xoshiro256** seeded by splitmix64): the same seed gives the
// same numbers on every machine and compiler, unlike <random>'s distributions.
#include <cstdint>
#include <string>

namespace quarot::detail {

inline uint64_t splitmix64(uint64_t& s) {
  uint64_t z = (s += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

inline uint64_t fnv1a(const std::string& s) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : s) h = (h ^ c) * 0x100000001b3ull;
  return h;
}

class Rng {
 public:
  explicit Rng(uint64_t seed) {
    for (auto& w : s_) w = splitmix64(seed);
  }
  uint64_t next() {
    const uint64_t r = rotl(s_[1] * 5, 7) * 9, t = s_[1] << 17;
    s_[2] ^= s_[0];
    s_[3] ^= s_[1];
    s_[1] ^= s_[2];
    s_[0] ^= s_[3];
    s_[2] ^= t;
    s_[3] = rotl(s_[3], 45);
    return r;
  }
  // Uniform in [0, 1) with 24 random bits: exact in fp32.
  float uniform() { return float(next() >> 40) * 0x1p-24f; }
  // Approximately standard normal: the sum of four 24-bit uniforms (Irwin-Hall), centred and
  // scaled to unit variance. Integer arithmetic and one multiply: bit-identical everywhere,
  // unlike std::normal_distribution or Box-Muller through libm.
  float gaussian() {
    const uint64_t a = next(), b = next();
    const uint64_t sum = (a >> 40) + ((a >> 8) & 0xffffff) + (b >> 40) + ((b >> 8) & 0xffffff);
    return (float(sum) * 0x1p-24f - 2.0f) * 1.7320508f;
  }
  int sign() { return (next() >> 63) ? -1 : 1; }

 private:
  static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
  uint64_t s_[4];
};

}  // namespace quarot::detail
