#pragma once
// The BPE model of Hugging Face `tokenizers` (models/bpe): a word is split into characters (ids
// from the vocabulary, else byte-fallback pieces <0xXX>, else the unknown token), then the
// adjacent pair with the lowest merge rank is merged, leftmost first, until no pair has a merge.
// Same algorithm as the Rust crate (a priority queue over a linked list of symbols), so ties
// and stale entries resolve identically.
#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace quarot::tok {

struct StringHash {
  using is_transparent = void;
  std::size_t operator()(std::string_view s) const noexcept { return std::hash<std::string_view>{}(s); }
};
using Vocab = std::unordered_map<std::string, int, StringHash, std::equal_to<>>;

class BpeModel {
 public:
  Vocab vocab;                        // piece -> id
  std::vector<std::string> id_to_piece;
  int unk_id = -1;
  bool fuse_unk = false;
  bool byte_fallback = false;
  bool ignore_merges = false;

  // Registers merge `rank` of (a, b); later duplicates replace earlier ones, as in the crate.
  // Returns false when a, b or a+b is not in the vocabulary.
  bool add_merge(std::string_view a, std::string_view b, int rank);
  // Call once after the vocabulary is set (the byte-fallback pieces).
  void finish();
  // Appends the ids of one pre-tokenized word.
  void tokenize(std::string_view word, std::vector<int>& out) const;
  std::size_t merge_count() const { return merges_.size(); }
  void reserve_merges(std::size_t n) { merges_.reserve(n); }
  // The merges as (left id, right id), in rank order (for export).
  std::vector<std::pair<int, int>> merges_by_rank() const;

 private:
  struct MergeTarget {
    int rank;
    int id;
  };
  static std::uint64_t key(int a, int b) { return (std::uint64_t(std::uint32_t(a)) << 32) | std::uint32_t(b); }
  const MergeTarget* find_merge(int a, int b) const {
    auto it = merges_.find(key(a, b));
    return it == merges_.end() ? nullptr : &it->second;
  }
  std::unordered_map<std::uint64_t, MergeTarget> merges_;
  int byte_ids_[256];
};

}  // namespace quarot::tok
