#pragma once
// Test helpers shared by the rotation and Qwen3 tests: the invariance measure of a rotation and
// RotationOptions with chosen steps. (Rotate + quantize + pack is the pipeline's: pipeline_support.hpp.)
#include <span>
#include <string>
#include <vector>

#include "quarot/forward.hpp"
#include "quarot/rotate.hpp"
#include "test_support.hpp"

namespace quarot::test {

// max |rotated - original| / max |original| over the logits of a window, and (when `decode`)
// of the same tokens fed one at a time through the KV cache.
template <class T>
double invariance_error(const ModelWeights& m, const RotationOptions& o, const std::vector<int>& tokens, bool decode = false) {
  ModelWeights r = m;
  const auto online = rotate_model(r, o);
  const int n = int(tokens.size());
  Transformer<T> a(m, n), b(r, n);
  b.set_hook(online_hook<T>(online));
  std::vector<T> la, lb;
  a.forward(tokens, la);
  if (decode) {
    std::vector<T> step;
    for (int i = 0; i < n; ++i) {
      b.forward(std::span<const int>(&tokens[std::size_t(i)], 1), step);
      lb.insert(lb.end(), step.begin(), step.end());
    }
  } else {
    b.forward(tokens, lb);
  }
  return max_rel_diff(la, lb);
}

// The rotation steps asked for (seed 7), the others off.
inline RotationOptions only(bool fuse, bool r1, bool r2, bool r3, bool r4) {
  RotationOptions o;
  o.fuse_norms = fuse;
  o.r1 = r1;
  o.r2 = r2;
  o.r3 = r3;
  o.r4 = r4;
  o.seed = 7;
  return o;
}

}  // namespace quarot::test
