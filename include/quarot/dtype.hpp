#pragma once
// Element types of the tensors quarot reads and writes (the safetensors dtype names), and exact
// conversions between fp32 and the 16-bit float formats.
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>

namespace quarot {

enum class DType { F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL };

std::optional<DType> parse_dtype(std::string_view name);  // "F32", "BF16", ...
std::string_view dtype_name(DType t);
std::size_t dtype_size(DType t);
bool is_float(DType t);

float f16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);  // round to nearest even; overflow to inf; NaN stays NaN
float bf16_to_f32(uint16_t b);
uint16_t f32_to_bf16(float f);  // round to nearest even; NaN stays NaN

// Converts n elements of a float dtype (F64/F32/F16/BF16) to fp32. `src` may be unaligned.
void convert_to_f32(DType src_type, const void* src, std::size_t n, float* dst);
// Converts n fp32 values to a float dtype. `dst` may be unaligned.
void convert_from_f32(DType dst_type, const float* src, std::size_t n, void* dst);

}  // namespace quarot
