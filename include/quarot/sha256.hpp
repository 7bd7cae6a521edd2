#pragma once
// SHA-256 (FIPS 180-4), for recording exactly which inputs a report was computed from.
#include <cstdint>
#include <span>
#include <string>

namespace quarot {

std::string sha256_hex(std::span<const uint8_t> data);
std::string sha256_hex(const std::string& data);
std::string sha256_file(const std::string& path);  // memory-mapped; throws quarot::Error

}  // namespace quarot
