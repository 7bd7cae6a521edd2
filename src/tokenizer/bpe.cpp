#include "bpe.hpp"

#include <algorithm>
#include <cstdio>
#include <queue>

#include "text.hpp"

namespace quarot::tok {

bool BpeModel::add_merge(std::string_view a, std::string_view b, int rank) {
  const auto ia = vocab.find(a), ib = vocab.find(b);
  if (ia == vocab.end() || ib == vocab.end()) return false;
  std::string ab;
  ab.reserve(a.size() + b.size());
  ab.append(a).append(b);
  const auto iab = vocab.find(ab);
  if (iab == vocab.end()) return false;
  merges_[key(ia->second, ib->second)] = MergeTarget{rank, iab->second};
  return true;
}

std::vector<std::pair<int, int>> BpeModel::merges_by_rank() const {
  std::vector<std::pair<int, std::pair<int, int>>> ranked;
  ranked.reserve(merges_.size());
  for (const auto& [k, t] : merges_) ranked.push_back({t.rank, {int(k >> 32), int(k & 0xFFFFFFFFu)}});
  std::sort(ranked.begin(), ranked.end());
  std::vector<std::pair<int, int>> out;
  out.reserve(ranked.size());
  for (const auto& r : ranked) out.push_back(r.second);
  return out;
}

void BpeModel::finish() {
  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof name, "<0x%02X>", b);
    auto it = vocab.find(std::string_view(name));
    byte_ids_[b] = it == vocab.end() ? -1 : it->second;
  }
}

namespace {
struct Symbol {
  int id;
  int prev;
  int next;
  bool alive;
};
struct Candidate {
  int rank;
  int pos;
  int id;
};
struct CandidateAfter {  // the queue's top is the lowest rank, then the leftmost position
  bool operator()(const Candidate& x, const Candidate& y) const { return x.rank != y.rank ? x.rank > y.rank : x.pos > y.pos; }
};
}  // namespace

void BpeModel::tokenize(std::string_view word, std::vector<int>& out) const {
  if (word.empty()) return;
  if (ignore_merges) {
    if (auto it = vocab.find(word); it != vocab.end()) {
      out.push_back(it->second);
      return;
    }
  }
  // Initial symbols, as the crate's merge_word: one per character; unknown characters become
  // byte-fallback pieces when all their bytes have one, else the unknown token (fused runs when
  // fuse_unk). A pending unknown is only flushed by the next known character, as in the crate.
  std::vector<Symbol> sym;
  sym.reserve(word.size());
  auto push = [&](int id) { sym.push_back(Symbol{id, int(sym.size()) - 1, int(sym.size()) + 1, true}); };
  int pending_unk = -1;
  for (std::size_t i = 0; i < word.size();) {
    const std::size_t n = std::min(utf8_len(static_cast<unsigned char>(word[i])), word.size() - i);
    const std::string_view ch = word.substr(i, n);
    i += n;
    if (auto it = vocab.find(ch); it != vocab.end()) {
      if (pending_unk >= 0) push(pending_unk), pending_unk = -1;
      push(it->second);
      continue;
    }
    if (byte_fallback) {
      bool all = true;
      for (char c : ch) all &= byte_ids_[static_cast<unsigned char>(c)] >= 0;
      if (all) {
        for (char c : ch) push(byte_ids_[static_cast<unsigned char>(c)]);
        continue;
      }
    }
    if (unk_id >= 0) {
      if (pending_unk >= 0 && !fuse_unk) push(pending_unk);
      pending_unk = unk_id;
    }
  }
  if (pending_unk >= 0) push(pending_unk);
  if (sym.empty()) return;
  sym.back().next = -1;

  std::priority_queue<Candidate, std::vector<Candidate>, CandidateAfter> queue;
  for (int i = 0; i + 1 < int(sym.size()); ++i)
    if (const auto* m = find_merge(sym[i].id, sym[i + 1].id)) queue.push(Candidate{m->rank, i, m->id});
  while (!queue.empty()) {
    const Candidate top = queue.top();
    queue.pop();
    Symbol& cur = sym[top.pos];
    if (!cur.alive || cur.next < 0) continue;
    const int next = cur.next;
    // A stale entry: one of the two symbols changed since it was queued.
    const auto* m = find_merge(cur.id, sym[next].id);
    if (!m || m->id != top.id) continue;
    cur.id = top.id;
    sym[next].alive = false;
    cur.next = sym[next].next;
    if (cur.next >= 0) sym[cur.next].prev = top.pos;
    if (cur.prev >= 0)
      if (const auto* mp = find_merge(sym[cur.prev].id, cur.id)) queue.push(Candidate{mp->rank, cur.prev, mp->id});
    if (cur.next >= 0)
      if (const auto* mn = find_merge(cur.id, sym[cur.next].id)) queue.push(Candidate{mn->rank, top.pos, mn->id});
  }
  for (const auto& s : sym)
    if (s.alive) out.push_back(s.id);
}

}  // namespace quarot::tok
