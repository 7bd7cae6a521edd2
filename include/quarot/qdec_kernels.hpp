#pragma once
// QDEC's hot kernels (src/ops): the residual store's layout, the exact top-k of |x| and the
// application of the selected residual rows (qdec.hpp says what QDEC is and builds the stores).
// R is stored transposed ([in][out], 4-bit nibble-packed along the output dimension) so one
// input channel's residual is one contiguous row.
#include <cstdint>
#include <vector>

#include "quarot/isa.hpp"

namespace quarot {

struct ResidualStore {
  int64_t rows = 0, cols = 0;  // the linear's [out][in]
  int bits = 4;                // 4 or 8
  std::vector<uint8_t> codes;  // [cols][row_bytes()]: 4-bit u = q + 8 (out 2j low nibble, 2j+1 high); 8-bit u = q + 128
  std::vector<float> scales;   // [rows]
  const uint8_t* external = nullptr;  // when set, the codes live elsewhere (a mapped packed file)
  int64_t row_bytes() const { return bits == 4 ? (rows + 1) / 2 : rows; }
  const uint8_t* code_data() const { return external ? external : codes.data(); }
  uint64_t bytes() const { return uint64_t(cols * row_bytes()) + uint64_t(rows) * 4; }
  int code(int64_t in, int64_t out) const;                                     // q in -qmax..qmax
  float residual(int64_t in, int64_t out) const { return float(code(in, out)) * scales[std::size_t(out)]; }
};

// The indices of the k largest |x[i]| (exact), largest first; ties go to the lower index.
// O(n): a selection of the k-th largest |x| (nth_element on a copy), then a sort of the k.
void top_k_abs(const float* x, int n, int k, std::vector<int>& out, Isa isa = best_isa());
// The plain reference: a stable sort of every index by |x|, the first k.
void top_k_abs_ref(const float* x, int n, int k, std::vector<int>& out);

// k_chunk channels per 1024 input channels: ceil(k_chunk * cols / 1024), at most cols;
// k_chunk < 0 selects every channel.
int qdec_k(int k_chunk, int64_t cols);

// y[t][o] += scale[o] * sum_{i in top-k(|x[t]|)} q[i][o] * x[t][i] for tokens t (x [tokens][cols],
// y [tokens][rows]). k = 0 leaves y untouched.
void qdec_compensate(const ResidualStore& r, const float* x, int tokens, int k, float* y);
// The same in two steps, so that linears reading one input share one selection:
// sel [tokens][k] = top_k_abs of each token; then apply. `isa` picks the kernel (AVX-512 when
// supported: same sums as the scalar reference up to fp32 reassociation, ~1e-6 relative).
void qdec_select(const float* x, int tokens, int cols, int k, std::vector<int>& sel, Isa isa = best_isa());
void qdec_apply(const ResidualStore& r, const float* x, int tokens, int k, const int* sel, float* y, Isa isa = best_isa());
// The plain loop qdec_apply is tested against.
void qdec_apply_reference(const ResidualStore& r, const float* x, int tokens, int k, const int* sel, float* y);

}  // namespace quarot
