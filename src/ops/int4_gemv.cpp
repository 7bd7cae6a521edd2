// The decode GEMV (1..3 tokens) of the packed INT4 weights, written to stream at DRAM speed
// (issue 19, item 2). The weights keep the packed layout of docs/format.md (rows contiguous,
// 32-byte blocks); what changes is the order of the reads and the work per byte:
//   - one row at a time, front to back, so the whole matrix is read as one sequential stream
//     (rows follow each other in memory) and each thread's share of rows is one stream too;
//     the old kernel walked 4 rows side by side in 32-byte steps (4 streams 2-5 KB apart);
//   - 64 bytes (two blocks) per load: the low nibbles of the 64 bytes are columns 0..31 of both
//     blocks, the high nibbles columns 32..63, so two vpdpbusd take them against the token's
//     codes permuted once per call to that order -- 6 instructions per 64 bytes instead of 12;
//   - no software prefetch: the hardware prefetchers follow the one stream, and on Zen 4 a
//     prefetcht0 2 KB ahead cost 20-30% of the byte rate (0.70-0.85x of the same loop without
//     it; prefetcht1/t2 at 2-8 KB ahead 0.84-1.0x; bench/RESULTS.md, 2026-12-01 GEMV section);
//   - rows handed to the threads in chunks (schedule dynamic): a thread that waits for a core
//     does not hold back the other.
// The int32 dot of every segment is exact, and the fp32 epilogue is GemmContext::add and
// ::store (int4_internal.hpp), so the result equals the scalar reference bit for bit.
// Compiled with -ffp-contract=off like int4.cpp.
// GCC 12's avx512fintrin.h trips -W(maybe-)uninitialized on its own undefined-vector idiom (as in
// kv_kernels.cpp).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif
#include <immintrin.h>

#include <cstring>
#include <vector>

#include "int4_internal.hpp"

namespace quarot::int4_detail {

namespace {

// Rows per dynamic work item (1-2.8 MB on the 7B shapes): each thread streams long runs of
// consecutive rows. With 16 rows (32-88 KB) the two threads' items interleaved and two threads
// decoded slower than one (bench/RESULTS.md, session 10: 4096 x 4096 0.219 vs 0.205 ms; 512
// rows: 0.122 ms); 8 items per 4096-row matrix still balance a thread that waits for a core.
constexpr int64_t kRowChunk = 512;


template <int T>
__attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni"))) void gemv_stream(const GemmContext& c, const int8_t* xp) {
  const auto& w = c.w;
  const int64_t K = c.K, row_bytes = K / 2, KP = (K / kInt4Block + 1) / 2 * 128;  // KP: permuted codes per token
  const __m512i mask = _mm512_set1_epi8(0x0F);
  const __m256i mask256 = _mm256_set1_epi8(0x0F);
  const std::size_t S = c.seg.size();
#pragma omp parallel for schedule(dynamic, 1) if (w.rows * K > (1 << 18))
  for (int64_t o0 = 0; o0 < w.rows; o0 += kRowChunk) {
    const int64_t o1 = std::min(w.rows, o0 + kRowChunk);
    for (int64_t o = o0; o < o1; ++o) {
      const uint8_t* row = w.packed + o * row_bytes;
      float acc[T] = {};
      for (std::size_t s = 0; s < S; ++s) {
        const int64_t b0 = c.seg[s].c0 / kInt4Block, b1 = c.seg[s].c1 / kInt4Block;
        __m512i sum[T][4];
        for (auto& st : sum)
          for (auto& v : st) v = _mm512_setzero_si512();
        int64_t b = b0;
        if (b % 2 == 1 && b < b1) {  // an odd first block: 256-bit
          for (int t = 0; t < T; ++t) {
            const int8_t* xt = xp + t * KP + (b / 2) * 128 + 32;
            const __m256i p = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + b * 32));
            __m256i d = _mm256_dpbusd_epi32(_mm256_setzero_si256(), _mm256_and_si256(p, mask256),
                                            _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xt)));
            d = _mm256_dpbusd_epi32(d, _mm256_and_si256(_mm256_srli_epi16(p, 4), mask256),
                                    _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xt + 64)));
            sum[t][0] = _mm512_add_epi32(sum[t][0], _mm512_zextsi256_si512(d));
          }
          ++b;
        }
        // Pairs of blocks: two pairs per step, 4 accumulators per token (two dependency chains each).
        for (; b + 4 <= b1; b += 4) {
          const __m512i p0 = _mm512_loadu_si512(row + b * 32), p1 = _mm512_loadu_si512(row + b * 32 + 64);
          const __m512i l0 = _mm512_and_si512(p0, mask), h0 = _mm512_and_si512(_mm512_srli_epi16(p0, 4), mask);
          const __m512i l1 = _mm512_and_si512(p1, mask), h1 = _mm512_and_si512(_mm512_srli_epi16(p1, 4), mask);
          for (int t = 0; t < T; ++t) {
            const int8_t* xt = xp + t * KP + b * 64;
            sum[t][0] = _mm512_dpbusd_epi32(sum[t][0], l0, _mm512_load_si512(xt));
            sum[t][1] = _mm512_dpbusd_epi32(sum[t][1], h0, _mm512_load_si512(xt + 64));
            sum[t][2] = _mm512_dpbusd_epi32(sum[t][2], l1, _mm512_load_si512(xt + 128));
            sum[t][3] = _mm512_dpbusd_epi32(sum[t][3], h1, _mm512_load_si512(xt + 192));
          }
        }
        if (b + 2 <= b1) {
          const __m512i p0 = _mm512_loadu_si512(row + b * 32);
          const __m512i l0 = _mm512_and_si512(p0, mask), h0 = _mm512_and_si512(_mm512_srli_epi16(p0, 4), mask);
          for (int t = 0; t < T; ++t) {
            const int8_t* xt = xp + t * KP + b * 64;
            sum[t][0] = _mm512_dpbusd_epi32(sum[t][0], l0, _mm512_load_si512(xt));
            sum[t][1] = _mm512_dpbusd_epi32(sum[t][1], h0, _mm512_load_si512(xt + 64));
          }
          b += 2;
        }
        if (b < b1) {  // an even last block without its pair: 256-bit
          for (int t = 0; t < T; ++t) {
            const int8_t* xt = xp + t * KP + (b / 2) * 128;
            const __m256i p = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + b * 32));
            __m256i d = _mm256_dpbusd_epi32(_mm256_setzero_si256(), _mm256_and_si256(p, mask256),
                                            _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xt)));
            d = _mm256_dpbusd_epi32(d, _mm256_and_si256(_mm256_srli_epi16(p, 4), mask256),
                                    _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xt + 64)));
            sum[t][2] = _mm512_add_epi32(sum[t][2], _mm512_zextsi256_si512(d));
          }
        }
        for (int t = 0; t < T; ++t) {
          const __m512i v = _mm512_add_epi32(_mm512_add_epi32(sum[t][0], sum[t][1]), _mm512_add_epi32(sum[t][2], sum[t][3]));
          c.add(acc[t], o, s, t, _mm512_reduce_add_epi32(v));
        }
      }
      for (int t = 0; t < T; ++t) c.store(t, o, acc[t]);
    }
  }
}

}  // namespace

bool gemv_stream_avx512(const GemmContext& c) {
  const int T = c.x.rows;
  if (T < 1 || T > 3) return false;
  for (const auto& s : c.seg)
    if (s.c0 % kInt4Block != 0 || s.c1 % kInt4Block != 0) return false;
  // The codes of each token in the order of the nibbles: per pair of blocks (2p, 2p + 1) the
  // columns 0..31 of both blocks, then 32..63 of both (a last unpaired block: zeros for its pair).
  const int64_t K = c.K, nb = K / kInt4Block, KP = (nb + 1) / 2 * 128;
  thread_local std::vector<int8_t> buf;
  buf.assign(std::size_t(T * KP + 64), 0);
  int8_t* xp = buf.data() + (64 - reinterpret_cast<uintptr_t>(buf.data()) % 64) % 64;
  for (int t = 0; t < T; ++t) {
    const int8_t* q = c.x.q.data() + int64_t(t) * K;
    for (int64_t b = 0; b < nb; ++b) {
      int8_t* d = xp + t * KP + (b / 2) * 128 + (b % 2) * 32;
      std::memcpy(d, q + b * kInt4Block, 32);
      std::memcpy(d + 64, q + b * kInt4Block + 32, 32);
    }
  }
  switch (T) {
    case 1:
      gemv_stream<1>(c, xp);
      break;
    case 2:
      gemv_stream<2>(c, xp);
      break;
    default:
      gemv_stream<3>(c, xp);
      break;
  }
  return true;
}

}  // namespace quarot::int4_detail
