#pragma once
// The quantized KV cache's read kernel (src/runtime keeps the cache): every (position, KV head)
// slot holds `dim` codes of `bits` bits, an fp32 scale and a zero point, and dequantizes to
// (code - zero) * scale. Keys and values have their own widths (K8V4: an INT8 key cache beside
// an INT4 value cache). The vector paths equal the scalar reference bit for bit: (code - zero)
// is an exact small integer, so one fp32 multiply rounds the same exact product as fp64 would.
#include <cstdint>

#include "quarot/isa.hpp"

namespace quarot {

// Bytes of one slot's codes: nibble-packed when bits <= 4 (element 2j in the low nibble of byte
// j, an odd dim's last high nibble 0), one byte per code otherwise (5..8 bits).
inline int kv_slot_bytes(int bits, int dim) { return bits <= 4 ? (dim + 1) / 2 : dim; }

// out[s * dim + i] = (code(s, i) - zero[s]) * scale[s] for `slots` consecutive slots whose codes
// are kv_slot_bytes(bits, dim) bytes apart. bits 2..8. Parallel (OpenMP) when large.
void kv_dequantize(const uint8_t* codes, const float* scale, const uint8_t* zero, int64_t slots, int dim, int bits, float* out,
                   Isa isa = best_isa());
// The plain reference the vector paths equal bit for bit.
void kv_dequantize_ref(const uint8_t* codes, const float* scale, const uint8_t* zero, int64_t slots, int dim, int bits, float* out);

}  // namespace quarot
