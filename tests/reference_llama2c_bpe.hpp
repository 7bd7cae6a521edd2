#pragma once
// run.c's llama2.c BPE encoder (quarot's implementation before the priority-queue merge), kept
// as the reference the tests check the fast merge against and the baseline the bench times: one
// piece per UTF-8 character (bytes as <0xNN> = id byte + 3 when missing), then rescan every
// adjacent pair after each merge and merge the best-scoring one: O(n^2).
#include <cstddef>
#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

#include "quarot/checkpoint.hpp"

namespace quarot::reference {

inline std::unordered_map<std::string, int> piece_lookup(const Llama2cTokenizer& t) {
  std::unordered_map<std::string, int> lookup;
  for (std::size_t i = 0; i < t.pieces.size(); ++i) lookup.emplace(t.pieces[i], int(i));
  return lookup;
}

inline std::vector<int> rescanning_encode(const Llama2cTokenizer& t, const std::unordered_map<std::string, int>& lookup,
                                          const std::string& text) {
  auto find = [&](const std::string& s) {
    auto it = lookup.find(s);
    return it == lookup.end() ? -1 : it->second;
  };
  std::vector<int> ids;
  if (text.empty()) return ids;
  if (auto sp = find(" "); sp >= 0) ids.push_back(sp);
  for (std::size_t i = 0; i < text.size();) {
    std::size_t len = 1;
    while (i + len < text.size() && len < 4 && (uint8_t(text[i + len]) & 0xC0) == 0x80) ++len;
    const int id = find(text.substr(i, len));
    if (id >= 0) ids.push_back(id);
    else
      for (std::size_t b = 0; b < len; ++b) ids.push_back(int(uint8_t(text[i + b])) + 3);
    i += len;
  }
  for (;;) {
    float best = -1e30f;
    int best_id = -1;
    std::size_t best_at = 0;
    for (std::size_t i = 0; i + 1 < ids.size(); ++i) {
      const int id = find(t.pieces[std::size_t(ids[i])] + t.pieces[std::size_t(ids[i + 1])]);
      if (id >= 0 && t.scores[std::size_t(id)] > best) {
        best = t.scores[std::size_t(id)];
        best_id = id;
        best_at = i;
      }
    }
    if (best_id < 0) break;
    ids[best_at] = best_id;
    ids.erase(ids.begin() + std::ptrdiff_t(best_at) + 1);
  }
  return ids;
}

}  // namespace quarot::reference
