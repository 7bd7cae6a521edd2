// quarot's INT4 kernels against the real ggml (the prebuilt llama.cpp CPU backend of the npm
// package @node-llama-cpp/linux-x64, scripts/install-llama-cpp.sh) in one process, on the
// LLaMA-2-7B shapes, with the machine's ceilings measured in the same run:
//   - the DRAM streaming read (AVX-512 loads over a buffer of --stream-mb, one and two threads),
//   - the VNNI int8 peak (16 independent zmm vpdpbusd on register accumulators, in asm), one
//     and two threads, with the core clock (a chain of dependent adds) to state it per cycle.
// Both are measured once at the start, and again inside every case's rounds as its "ceiling"
// row (at M = 1 a read of as many bytes as quarot's weights, at M > 1 as many int8 ops as the
// product), so "% ceiling" compares times from the same rounds.
// Kernels, per shape, token count M and thread count, timed in interleaved rounds (one run of
// each kernel per round; a loaded machine drifts, so the ratios come from the same rounds):
//   quarot W4A4   quantize_activations (4 bits, per token) + int4_gemm, per-channel symmetric INT4
//   quarot W4A16  int4_gemm_f32 on the same weights (fp32 FMA: the baseline of the next row)
//   quarot W4A16 int16  int4_gemm_a16_int16: activations as 16-bit codes per token, vpdpwssd
//   quarot W4A16 int16 gN  the same with --w-group N: weight groups of N columns (the w4a16-rtn
//                 preset's 128), one scale per row and group (activation codes per token and group)
//   ggml Q4_0     ggml_mul_mat through the CPU backend, the weights in the CPU_REPACK buffer type
//                 (what llama.cpp does by default on x86 with AVX2: Q4_0 repacked to q4_0_8x8)
//   ggml F32      ggml_mul_mat on fp32 weights
// At M = 1 every kernel cycles through copies of its weights worth at least --cycle-mb, so no
// copy is still in the last-level cache when it is used again (ggml: one graph holding one
// mul_mat per copy, as a model's forward holds its layers; time per product).
//
// The package ships no headers: the few ggml functions called here are declared below from
// ggml.h / ggml-backend.h of the same era, and the ABI is checked at start (type sizes, the
// repack buffer's name, exact results of a tiny Q4_0 and F32 product). Without the package the
// ggml rows are skipped with a message; quarot and the ceilings still run.
//
//   quarot-bench-vs-ggml [--reps 7] [--cycle-mb 128] [--ms 1,16,512] [--threads 1,2] [--lib DIR] [--no-a16] [--no-f32]
//                        [--w-group 128]   (adds the int16 row on grouped weights)
//                        [--cpu-time]   (process CPU seconds: one thread on a machine shared with other jobs)
#include <dlfcn.h>
#include <immintrin.h>
#include <omp.h>
#include <sys/mman.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <tuple>
#include <vector>

#include "quarot/detail/rng.hpp"
#include "quarot/int4.hpp"
#include "quarot/int4_a16.hpp"
#include "quarot/large_buffer.hpp"
#include "int4_copies.hpp"

using Clock = std::chrono::steady_clock;

namespace {

// Seconds on the wall clock, or with --cpu-time the process's CPU seconds: on a machine shared
// with other jobs a one-thread run then leaves the time it waited for the core out (with two
// threads it is the CPU of both, a cost rather than a latency).
bool g_cpu_time = false;
double tick() {
  if (!g_cpu_time) return std::chrono::duration<double>(Clock::now().time_since_epoch()).count();
  timespec t{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
  return double(t.tv_sec) + 1e-9 * double(t.tv_nsec);
}
double since(double t0) { return tick() - t0; }

struct Stats {
  double min = 0, median = 0;
};
Stats stats_of(std::vector<double> t) {
  std::sort(t.begin(), t.end());
  return {t.front(), t[t.size() / 2]};
}

// ------------------------------------------------------------------ machine ceilings

__attribute__((target("avx512f"), noinline)) uint64_t read_range(const uint8_t* p, std::size_t bytes) {
  __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;
  for (std::size_t i = 0; i + 256 <= bytes; i += 256) {
    a0 = _mm512_xor_si512(a0, _mm512_load_si512(p + i));
    a1 = _mm512_xor_si512(a1, _mm512_load_si512(p + i + 64));
    a2 = _mm512_xor_si512(a2, _mm512_load_si512(p + i + 128));
    a3 = _mm512_xor_si512(a3, _mm512_load_si512(p + i + 192));
  }
  alignas(64) uint64_t lanes[8];
  _mm512_store_si512(lanes, _mm512_xor_si512(_mm512_xor_si512(a0, a1), _mm512_xor_si512(a2, a3)));
  uint64_t s = 0;
  for (uint64_t v : lanes) s += v;
  return s;
}

// Seconds to read `bytes` once with `threads` threads (each a contiguous share).
double time_read(const uint8_t* p, std::size_t bytes, int threads) {
  volatile uint64_t sink = 0;
  const double t0 = tick();
#pragma omp parallel num_threads(threads)
  {
    const int n = omp_get_num_threads(), i = omp_get_thread_num();
    const std::size_t share = bytes / std::size_t(n) / 256 * 256;
    sink = sink + read_range(p + share * std::size_t(i), share);
  }
  return since(t0);
}

// `iters` x 16 independent vpdpbusd (zmm) per thread: 16 x 64 multiply-adds = 2048 int ops each.
// The 16 instructions are written in asm on 16 named register accumulators: the earlier version
// (an `__m512i acc[16]` array with empty asm barriers) was compiled by g++ 12 into 16 zmm loads
// and 16 stores to the stack per iteration, a dependency through memory that ran at 0.24-0.5
// vpdpbusd per cycle, half or less of the row-interleaved GEMM's rate. This one runs at 1.0 per
// cycle on Zen 4 (zmm vpdpbusd double-pumped on the 256-bit units: 4 chains already saturate it).
#define QUAROT_DPBUSD(r) "vpdpbusd %[b], %[a], %[" #r "]\n\t"
__attribute__((target("avx512f,avx512vnni"), noinline)) int64_t vnni_loop(int64_t iters) {
  __m512i c0 = _mm512_set1_epi32(0), c1 = _mm512_set1_epi32(1), c2 = _mm512_set1_epi32(2), c3 = _mm512_set1_epi32(3);
  __m512i c4 = _mm512_set1_epi32(4), c5 = _mm512_set1_epi32(5), c6 = _mm512_set1_epi32(6), c7 = _mm512_set1_epi32(7);
  __m512i c8 = _mm512_set1_epi32(8), c9 = _mm512_set1_epi32(9), c10 = _mm512_set1_epi32(10), c11 = _mm512_set1_epi32(11);
  __m512i c12 = _mm512_set1_epi32(12), c13 = _mm512_set1_epi32(13), c14 = _mm512_set1_epi32(14), c15 = _mm512_set1_epi32(15);
  const __m512i a = _mm512_set1_epi8(3), b = _mm512_set1_epi8(5);
  // Two asm statements of 8 (an asm takes at most 30 operands; "+v" counts twice).
  for (int64_t k = 0; k < iters; ++k) {
    asm volatile(QUAROT_DPBUSD(c0) QUAROT_DPBUSD(c1) QUAROT_DPBUSD(c2) QUAROT_DPBUSD(c3) QUAROT_DPBUSD(c4) QUAROT_DPBUSD(c5)
                     QUAROT_DPBUSD(c6) QUAROT_DPBUSD(c7)
                 : [c0] "+v"(c0), [c1] "+v"(c1), [c2] "+v"(c2), [c3] "+v"(c3), [c4] "+v"(c4), [c5] "+v"(c5), [c6] "+v"(c6),
                   [c7] "+v"(c7)
                 : [a] "v"(a), [b] "v"(b));
    asm volatile(QUAROT_DPBUSD(c8) QUAROT_DPBUSD(c9) QUAROT_DPBUSD(c10) QUAROT_DPBUSD(c11) QUAROT_DPBUSD(c12)
                     QUAROT_DPBUSD(c13) QUAROT_DPBUSD(c14) QUAROT_DPBUSD(c15)
                 : [c8] "+v"(c8), [c9] "+v"(c9), [c10] "+v"(c10), [c11] "+v"(c11), [c12] "+v"(c12), [c13] "+v"(c13),
                   [c14] "+v"(c14), [c15] "+v"(c15)
                 : [a] "v"(a), [b] "v"(b));
  }
  const __m512i s = _mm512_add_epi32(
      _mm512_add_epi32(_mm512_add_epi32(_mm512_add_epi32(c0, c1), _mm512_add_epi32(c2, c3)),
                       _mm512_add_epi32(_mm512_add_epi32(c4, c5), _mm512_add_epi32(c6, c7))),
      _mm512_add_epi32(_mm512_add_epi32(_mm512_add_epi32(c8, c9), _mm512_add_epi32(c10, c11)),
                       _mm512_add_epi32(_mm512_add_epi32(c12, c13), _mm512_add_epi32(c14, c15))));
  alignas(64) int32_t lanes[16];
  _mm512_store_si512(lanes, s);
  int64_t sum = 0;
  for (int32_t v : lanes) sum += v;
  return sum;
}
#undef QUAROT_DPBUSD

// `iters` x 64 dependent 1-cycle integer adds: the core clock, to turn the peak into vpdpbusd per cycle.
#define QUAROT_ADD8 "add $1, %[x]\n\tadd $1, %[x]\n\tadd $1, %[x]\n\tadd $1, %[x]\n\tadd $1, %[x]\n\tadd $1, %[x]\n\tadd $1, %[x]\n\tadd $1, %[x]\n\t"
__attribute__((noinline)) int64_t add_chain(int64_t iters) {
  int64_t x = 0;
  for (int64_t k = 0; k < iters; ++k)
    asm volatile(QUAROT_ADD8 QUAROT_ADD8 QUAROT_ADD8 QUAROT_ADD8 QUAROT_ADD8 QUAROT_ADD8 QUAROT_ADD8 QUAROT_ADD8 : [x] "+r"(x));
  return x;
}
#undef QUAROT_ADD8

// Reads `bytes` of the buffer [p, p + size) from `*offset` on (wrapping), split over the threads.
void read_rolling(const uint8_t* p, std::size_t size, std::size_t bytes, std::size_t* offset, int threads) {
  volatile uint64_t sink = 0;
  while (bytes >= 256 * std::size_t(threads)) {
    const std::size_t n = std::min(bytes, size - *offset) / 256 / std::size_t(threads) * 256 * std::size_t(threads);
#pragma omp parallel num_threads(threads)
    {
      const std::size_t share = n / std::size_t(omp_get_num_threads());
      sink = sink + read_range(p + *offset + share * std::size_t(omp_get_thread_num()), share);
    }
    bytes -= n;
    *offset = (*offset + n) % size;
    if (size - *offset < 256 * std::size_t(threads)) *offset = 0;
  }
}

// Seconds of `iters` x 64 dependent adds on one thread (= iters x 64 core cycles).
double time_add_chain(int64_t iters) {
  volatile int64_t sink = 0;
  const double t0 = tick();
  sink = sink + add_chain(iters);
  return since(t0);
}

double time_vnni(int64_t iters, int threads) {
  volatile int64_t sink = 0;
  const double t0 = tick();
#pragma omp parallel num_threads(threads)
  sink = sink + vnni_loop(iters);
  return since(t0);
}

// ------------------------------------------------------------------ ggml through dlopen

// ggml.h / ggml-backend.h (ggml 0.9.x, the package's build): only what is called here.
struct GgmlInitParams {
  std::size_t mem_size;
  void* mem_buffer;
  bool no_alloc;
};
constexpr int kGgmlF32 = 0, kGgmlQ4_0 = 2, kGgmlDevCpu = 0;

struct Ggml {
  const char* (*version)() = nullptr;
  void (*log_set)(void (*)(int, const char*, void*), void*) = nullptr;
  void* (*init)(GgmlInitParams) = nullptr;
  void (*free_ctx)(void*) = nullptr;
  void* (*new_tensor_2d)(void*, int, int64_t, int64_t) = nullptr;
  void* (*mul_mat)(void*, void*, void*) = nullptr;
  void* (*new_graph)(void*) = nullptr;
  void (*build_forward_expand)(void*, void*) = nullptr;
  std::size_t (*type_size)(int) = nullptr;
  int64_t (*blck_size)(int) = nullptr;
  std::size_t (*tensor_overhead)() = nullptr;
  std::size_t (*graph_overhead)() = nullptr;
  std::size_t (*nbytes)(const void*) = nullptr;
  std::size_t (*quantize_chunk)(int, const float*, void*, int64_t, int64_t, int64_t, const float*) = nullptr;
  void* (*alloc_ctx_tensors_from_buft)(void*, void*) = nullptr;
  void (*buffer_free)(void*) = nullptr;
  void (*tensor_set)(void*, const void*, std::size_t, std::size_t) = nullptr;
  void (*tensor_get)(const void*, void*, std::size_t, std::size_t) = nullptr;
  int (*graph_compute)(void*, void*) = nullptr;
  const char* (*buft_name)(void*) = nullptr;
  void (*load_all_from_path)(const char*) = nullptr;
  void* (*dev_by_type)(int) = nullptr;
  const char* (*dev_name)(void*) = nullptr;
  void* (*dev_init)(void*, const char*) = nullptr;
  void* (*dev_buffer_type)(void*) = nullptr;
  void* (*dev_backend_reg)(void*) = nullptr;
  void* (*reg_get_proc_address)(void*, const char*) = nullptr;
  void (*set_n_threads)(void*, int) = nullptr;  // ggml_backend_cpu_set_n_threads, via the registry
  void* backend = nullptr;
  void* cpu_buft = nullptr;
  void* repack_buft = nullptr;  // CPU_REPACK
  std::string variant;
};

void quiet_log(int, const char*, void*) {}

std::string default_lib_dir() {  // the conventions of tests/llama_cpp (default_library_dir)
  if (const char* lib = std::getenv("QUAROT_LLAMA_CPP_LIB"); lib && *lib) return lib;
  std::string root;
  if (const char* d = std::getenv("QUAROT_LLAMA_CPP_DIR"); d && *d)
    root = d;
  else
    root = std::string(std::getenv("HOME") ? std::getenv("HOME") : ".") + "/.cache/quarot/llama.cpp-3.22.1";
  return root + "/package/bins/linux-x64";
}

// Opens libggml*.so in `dir`; false with `why` when it is not there or its ABI is not the one
// declared above.
bool open_ggml(const std::string& dir, Ggml& g, std::string& why) {
  namespace fs = std::filesystem;
  std::error_code ec;
  std::string ggml_path;
  if (fs::is_directory(dir, ec))
    for (const auto& e : fs::directory_iterator(dir, ec)) {
      const std::string n = e.path().filename().string();
      if (n.rfind("libggml.", 0) == 0 && n.ends_with(".so")) ggml_path = e.path().string();
    }
  if (ggml_path.empty()) {
    why = "no libggml.*.so in " + dir + " (run scripts/install-llama-cpp.sh)";
    return false;
  }
  // libggml's RUNPATH ($ORIGIN) brings libggml-base; the CPU variants are found by the registry.
  void* h = dlopen(ggml_path.c_str(), RTLD_NOW | RTLD_LOCAL);
  void* hb = dlopen((dir + "/libggml-base.so").c_str(), RTLD_NOW | RTLD_LOCAL);
  if (!h || !hb) {
    why = std::string("dlopen failed: ") + dlerror();
    return false;
  }
  bool ok = true;
  auto sym = [&](auto& fn, const char* name) {
    void* p = dlsym(hb, name);
    if (!p) p = dlsym(h, name);
    if (!p) {
      why += std::string(why.empty() ? "" : ", ") + "no symbol " + name;
      ok = false;
      return;
    }
    fn = reinterpret_cast<std::remove_reference_t<decltype(fn)>>(p);
  };
  sym(g.version, "ggml_version");
  sym(g.log_set, "ggml_log_set");
  sym(g.init, "ggml_init");
  sym(g.free_ctx, "ggml_free");
  sym(g.new_tensor_2d, "ggml_new_tensor_2d");
  sym(g.mul_mat, "ggml_mul_mat");
  sym(g.new_graph, "ggml_new_graph");
  sym(g.build_forward_expand, "ggml_build_forward_expand");
  sym(g.type_size, "ggml_type_size");
  sym(g.blck_size, "ggml_blck_size");
  sym(g.tensor_overhead, "ggml_tensor_overhead");
  sym(g.graph_overhead, "ggml_graph_overhead");
  sym(g.nbytes, "ggml_nbytes");
  sym(g.quantize_chunk, "ggml_quantize_chunk");
  sym(g.alloc_ctx_tensors_from_buft, "ggml_backend_alloc_ctx_tensors_from_buft");
  sym(g.buffer_free, "ggml_backend_buffer_free");
  sym(g.tensor_set, "ggml_backend_tensor_set");
  sym(g.tensor_get, "ggml_backend_tensor_get");
  sym(g.graph_compute, "ggml_backend_graph_compute");
  sym(g.buft_name, "ggml_backend_buft_name");
  sym(g.load_all_from_path, "ggml_backend_load_all_from_path");
  sym(g.dev_by_type, "ggml_backend_dev_by_type");
  sym(g.dev_name, "ggml_backend_dev_name");
  sym(g.dev_init, "ggml_backend_dev_init");
  sym(g.dev_buffer_type, "ggml_backend_dev_buffer_type");
  sym(g.dev_backend_reg, "ggml_backend_dev_backend_reg");
  sym(g.reg_get_proc_address, "ggml_backend_reg_get_proc_address");
  if (!ok) return false;
  g.log_set(quiet_log, nullptr);
  if (g.type_size(kGgmlQ4_0) != 18 || g.blck_size(kGgmlQ4_0) != 32 || g.type_size(kGgmlF32) != 4 || g.blck_size(kGgmlF32) != 1) {
    why = "ABI: ggml_type_size/blck_size of Q4_0 (18/32) or F32 (4/1) differ";
    return false;
  }
  g.load_all_from_path(dir.c_str());
  void* dev = g.dev_by_type(kGgmlDevCpu);
  if (!dev) {
    why = "no CPU device after ggml_backend_load_all_from_path";
    return false;
  }
  g.variant = g.dev_name(dev);
  g.backend = g.dev_init(dev, nullptr);
  void* reg = g.dev_backend_reg(dev);
  g.set_n_threads = reinterpret_cast<void (*)(void*, int)>(g.reg_get_proc_address(reg, "ggml_backend_set_n_threads"));
  using ExtraBufts = void** (*)(void*);
  const auto extra = reinterpret_cast<ExtraBufts>(g.reg_get_proc_address(reg, "ggml_backend_dev_get_extra_bufts"));
  if (!g.backend || !g.set_n_threads || !extra) {
    why = "CPU backend: no backend, ggml_backend_set_n_threads or ggml_backend_dev_get_extra_bufts";
    return false;
  }
  g.cpu_buft = g.dev_buffer_type(dev);
  for (void** b = extra(dev); b && *b; ++b)
    if (std::string(g.buft_name(*b)) == "CPU_REPACK") g.repack_buft = *b;
  return true;
}

// Weights [N][K] of one ggml type in one buffer type, `copies` of them, and one graph per
// token count holding one mul_mat per copy.
class GgmlLinear {
 public:
  GgmlLinear(const Ggml& g, int type, void* buft, int64_t N, int64_t K, int copies, const void* data)
      : g_(g), N_(N), K_(K) {
    wctx_ = g.init({g.tensor_overhead() * std::size_t(copies + 1), nullptr, true});
    for (int c = 0; c < copies; ++c) w_.push_back(g.new_tensor_2d(wctx_, type, K, N));
    wbuf_ = g.alloc_ctx_tensors_from_buft(wctx_, buft);
    for (void* t : w_) g.tensor_set(t, data, 0, g.nbytes(t));  // the repack buffer repacks here
    bytes_ = g.nbytes(w_[0]);
  }
  ~GgmlLinear() {
    drop_graph();
    g_.buffer_free(wbuf_);
    g_.free_ctx(wctx_);
  }
  std::size_t bytes() const { return bytes_; }
  // y[M][N] = x[M][K] W^T through `uses` products of the copies (graph built once per M).
  void run(const float* x, int M, int uses, float* y) {
    if (M != M_ || uses != uses_) build(M, uses);
    g_.tensor_set(x_, x, 0, std::size_t(M) * std::size_t(K_) * 4);
    g_.graph_compute(g_.backend, graph_);
    g_.tensor_get(y_.back(), y, 0, std::size_t(M) * std::size_t(N_) * 4);
  }

 private:
  void drop_graph() {
    if (cbuf_) g_.buffer_free(cbuf_);
    if (cctx_) g_.free_ctx(cctx_);
    cbuf_ = cctx_ = nullptr;
    y_.clear();
  }
  void build(int M, int uses) {
    drop_graph();
    cctx_ = g_.init({g_.tensor_overhead() * std::size_t(uses + 2) + g_.graph_overhead(), nullptr, true});
    x_ = g_.new_tensor_2d(cctx_, kGgmlF32, K_, M);
    graph_ = g_.new_graph(cctx_);
    for (int u = 0; u < uses; ++u) {
      y_.push_back(g_.mul_mat(cctx_, w_[std::size_t(u) % w_.size()], x_));
      g_.build_forward_expand(graph_, y_.back());
    }
    cbuf_ = g_.alloc_ctx_tensors_from_buft(cctx_, g_.cpu_buft);
    M_ = M;
    uses_ = uses;
  }
  const Ggml& g_;
  int64_t N_, K_;
  void *wctx_ = nullptr, *wbuf_ = nullptr, *cctx_ = nullptr, *cbuf_ = nullptr, *x_ = nullptr, *graph_ = nullptr;
  std::vector<void*> w_, y_;
  std::size_t bytes_ = 0;
  int M_ = -1, uses_ = -1;
};

// A Q4_0 and an F32 product whose exact result is known: codes -8..7 with a -8 in every block
// (ggml's Q4_0 scale is then exactly 1) against activations in -127..127 with |127| in every
// block (Q8_0 scale 1): every step is exact, so ggml must return the integer dot.
bool check_ggml_results(const Ggml& g, std::string& why) {
  constexpr int64_t N = 8, K = 64;
  std::vector<float> w(N * K), x(K), expect(N, 0.f);
  for (int64_t o = 0; o < N; ++o)
    for (int64_t k = 0; k < K; ++k) w[std::size_t(o * K + k)] = float((o * 7 + k * 3) % 16 - 8);
  for (int64_t k = 0; k < K; ++k) x[std::size_t(k)] = k % 32 == 5 ? 127.f : float((k * 37) % 200 - 100);
  for (int64_t o = 0; o < N; ++o)
    for (int64_t k = 0; k < K; ++k) expect[std::size_t(o)] += w[std::size_t(o * K + k)] * x[std::size_t(k)];
  std::vector<uint8_t> q(std::size_t(N * K / 32 * 18));
  if (g.quantize_chunk(kGgmlQ4_0, w.data(), q.data(), 0, N, K, nullptr) != q.size()) {
    why = "ggml_quantize_chunk(Q4_0) returned an unexpected size";
    return false;
  }
  for (const auto& [type, buft, data] : {std::tuple<int, void*, const void*>{kGgmlQ4_0, g.repack_buft, q.data()},
                                         std::tuple<int, void*, const void*>{kGgmlQ4_0, g.cpu_buft, q.data()},
                                         std::tuple<int, void*, const void*>{kGgmlF32, g.cpu_buft, w.data()}}) {
    if (!buft) continue;
    std::vector<float> y(N, -1.f);
    {
      GgmlLinear lin(g, type, buft, N, K, 1, data);
      g.set_n_threads(g.backend, 1);
      lin.run(x.data(), 1, 1, y.data());
    }
    if (y != expect) {
      why = std::string("ggml_mul_mat of a known product (") + (type == kGgmlF32 ? "F32" : "Q4_0") + " in " + g.buft_name(buft) +
            ") is " + std::to_string(y[0]) + ", expected " + std::to_string(expect[0]);
      return false;
    }
  }
  return true;
}


struct Kernel {
  std::string name;
  double bytes;                  // weight bytes read per product
  std::function<void(int)> run;  // `uses` products (copies cycled), timed together
};

}  // namespace

int main(int argc, char** argv) {
  int reps = 7, cycle_mb = 128, stream_mb = 512;
  std::vector<int> ms = {1, 16, 512}, threads = {1, 2};
  std::string lib_dir = default_lib_dir();
  bool no_ggml = false, no_a16 = false, no_f32 = false, small_pages = false;
  int64_t w_group = 0;
  CLI::App app{"quarot's INT4 kernels vs ggml Q4_0 / F32 on LLaMA-2-7B shapes, with DRAM read and VNNI peak.",
               "quarot-bench-vs-ggml"};
  app.add_option("--reps", reps, "interleaved rounds per case (min and median)")->capture_default_str();
  app.add_option("--cycle-mb", cycle_mb, "weight bytes cycled through at M = 1 (MB)")->capture_default_str();
  app.add_option("--stream-mb", stream_mb, "buffer of the DRAM read measurement (MB)")->capture_default_str();
  app.add_option("--ms", ms, "token counts")->delimiter(',');
  app.add_option("--threads", threads, "thread counts")->delimiter(',');
  app.add_option("--lib", lib_dir, "folder of the package's libggml*.so")->capture_default_str();
  app.add_flag("--no-ggml", no_ggml, "skip ggml");
  app.add_flag("--no-a16", no_a16, "skip quarot W4A16 (int4_gemm_f32, int4_gemm_a16_int16)");
  app.add_flag("--cpu-time", g_cpu_time, "process CPU seconds instead of wall seconds (one thread on a busy machine)");
  app.add_flag("--small-pages", small_pages,
               "quarot's weight copies and the DRAM read buffer on 4 KiB pages (default: 2 MiB pages, MADV_HUGEPAGE, as the "
               "packed runtime holds its weights)");
  app.add_option("--w-group", w_group, "also time int4_gemm_a16_int16 on weights grouped by this many columns (0: no)")
      ->capture_default_str();
  app.add_flag("--no-f32", no_f32, "skip ggml F32 (slow at M = 512 on a busy machine)");
  CLI11_PARSE(app, argc, argv);
  if (reps < 1 || cycle_mb < 1 || stream_mb < 64) {
    std::fprintf(stderr, "quarot-bench-vs-ggml: --reps and --cycle-mb must be >= 1, --stream-mb >= 64\n");
    return 2;
  }
  if (w_group < 0 || w_group % quarot::kInt4Block != 0 || (w_group > 0 && (4096 % w_group != 0 || 11008 % w_group != 0))) {
    std::fprintf(stderr, "quarot-bench-vs-ggml: --w-group must be 0 or a multiple of 64 dividing 4096 and 11008\n");
    return 2;
  }
  if (!quarot::isa_supported(quarot::Isa::Avx512Vnni)) {
    std::fprintf(stderr, "quarot-bench-vs-ggml: the DRAM/VNNI ceilings need AVX-512 VNNI; this CPU has none\n");
    return 1;
  }

  Ggml g;
  bool have_ggml = false;
  if (!no_ggml) {
    std::string why;
    have_ggml = open_ggml(lib_dir, g, why) && check_ggml_results(g, why);
    if (have_ggml)
      std::printf("ggml %s, CPU device %s, Q4_0 weights in %s; ABI checked (Q4_0 18 bytes / 32, F32 4 / 1, exact tiny products)\n",
                  g.version(), g.variant.c_str(), g.repack_buft ? "CPU_REPACK (repacked as llama.cpp runs it)" : "CPU (plain Q4_0: no repack buffer)");
    else
      std::printf("ggml skipped: %s\n", why.c_str());
  }
  std::printf("quarot int4 path: %s\n\n", quarot::isa_name(quarot::best_isa()));

  // The ceilings, interleaved over the thread counts (and again inside every case's rounds below).
  std::vector<double> dram_gbs(threads.size()), vnni_gops(threads.size());
  const std::size_t stream_bytes = std::size_t(stream_mb) << 20;
  uint8_t* stream_buf = static_cast<uint8_t*>(quarot::large_alloc(stream_bytes));  // >= 64 MB: 2 MiB aligned, mapped
  if (small_pages) ::madvise(stream_buf, stream_bytes, MADV_NOHUGEPAGE);
  std::printf("quarot's weight copies and the DRAM read buffer on %s pages\n", small_pages ? "4 KiB" : "2 MiB (MADV_HUGEPAGE)");
  for (std::size_t i = 0; i < stream_bytes; i += 8) std::memcpy(stream_buf + i, &i, 8);
  std::size_t stream_offset = 0;
  {
    const std::size_t bytes = stream_bytes;
    const uint8_t* buf = stream_buf;
    const int64_t iters = 1 << 22;
    const int64_t clock_iters = 1 << 22;
    std::vector<std::vector<double>> tr(threads.size()), tv(threads.size());
    std::vector<double> tclock;
    for (int r = 0; r < reps; ++r) {
      tclock.push_back(time_add_chain(clock_iters));
      for (std::size_t i = 0; i < threads.size(); ++i) {
        tr[i].push_back(time_read(buf, bytes, threads[i]));
        tv[i].push_back(time_vnni(iters, threads[i]));
      }
    }
    const double ghz = double(clock_iters) * 64 / stats_of(tclock).min / 1e9;
    std::printf("core clock (dependent adds, best of %d): %.2f GHz; the VNNI peak in zmm vpdpbusd per cycle per thread: %.2f\n\n",
                reps, ghz, double(iters) * 16 / stats_of(tv[0]).min / (ghz * 1e9));
    std::printf("| threads | DRAM read GB/s (best, median) | VNNI int8 GOP/s (best, median) |\n|---|---|---|\n");
    for (std::size_t i = 0; i < threads.size(); ++i) {
      const Stats sr = stats_of(tr[i]), sv = stats_of(tv[i]);
      const double ops = double(iters) * 16 * 64 * 2 * threads[i];
      dram_gbs[i] = double(bytes) / sr.min / 1e9;
      vnni_gops[i] = ops / sv.min / 1e9;
      std::printf("| %d | %.1f, %.1f | %.0f, %.0f |\n", threads[i], dram_gbs[i], double(bytes) / sr.median / 1e9, vnni_gops[i],
                  ops / sv.median / 1e9);
    }
    std::printf("\n");
  }

  // Every case's rounds also time its ceiling: at M = 1 a stream read of as many bytes as quarot's
  // weights (the kernels' "% ceiling" is their weight GB/s over that read's), at M > 1 as many
  // vpdpbusd int ops as the product (their GOP/s over the peak's); min over min, median over median.
  std::printf("| N x K | M | thr | kernel | min ms | median ms | weight GB/s (min) | GOP/s (min) | %% ceiling (min, median) | vs ggml Q4_0 (min, median) |\n");
  std::printf("|---|---|---|---|---|---|---|---|---|---|\n");
  quarot::detail::Rng rng(7);
  const std::pair<int64_t, int64_t> shapes[] = {{4096, 4096}, {11008, 4096}, {4096, 11008}};
  for (const auto& shape : shapes) {
    const int64_t N = shape.first, K = shape.second;  // not a structured binding: clang 14 cannot capture one
    const int64_t cycle = int64_t(cycle_mb) << 20;
    auto copies_for = [&](double bytes) { return int(std::max<int64_t>(1, (cycle + int64_t(bytes) - 1) / int64_t(bytes))); };
    // quarot: per-channel symmetric INT4, random codes.
    const double q_bytes = double(N * quarot::int4_padded_cols(K) / 2 + N * 4);
    const auto wq = quarot::bench::random_int4_copies(copies_for(q_bytes), N, K, rng, !small_pages);
    // --w-group: the same codes, one scale per row and group (symmetric, as the w4a16-rtn preset's RTN)
    const std::vector<float> group_scales(std::size_t(w_group > 0 ? N * (K / w_group) : 0), 0.003f);
    auto grouped = [&](const quarot::bench::Int4Copy& copy) {
      quarot::Int4Weights w = copy.view(N, K);
      w.group_size = w_group;
      w.scales = group_scales.data();
      return w;
    };
    // ggml: gaussian weights through ggml's own Q4_0 quantizer; F32 as they are.
    std::vector<float> wf(std::size_t(N * K));
    for (auto& v : wf) v = rng.gaussian() * 0.02f;
    std::unique_ptr<GgmlLinear> g_q4, g_f32;
    if (have_ggml) {
      std::vector<uint8_t> q(std::size_t(N * K / 32 * 18));
      g.quantize_chunk(kGgmlQ4_0, wf.data(), q.data(), 0, N, K, nullptr);
      const double q4_bytes = double(q.size()), f_bytes = double(N * K * 4);
      g_q4 = std::make_unique<GgmlLinear>(g, kGgmlQ4_0, g.repack_buft ? g.repack_buft : g.cpu_buft, N, K, copies_for(q4_bytes), q.data());
      g_f32 = std::make_unique<GgmlLinear>(g, kGgmlF32, g.cpu_buft, N, K, copies_for(f_bytes), wf.data());
    }
    for (int M : ms) {
      std::vector<float> x(std::size_t(M * K)), y(std::size_t(M * N));
      for (auto& v : x) v = rng.gaussian();
      quarot::Int8Activations a;
      std::size_t qi = 0;
      std::vector<Kernel> ks;
      int cur_threads = 1;
      const double ops = 2.0 * M * double(N) * double(K);
      if (M == 1)
        ks.push_back({"ceiling: DRAM read", q_bytes, [&](int uses) {
                        read_rolling(stream_buf, stream_bytes, std::size_t(q_bytes) * std::size_t(uses), &stream_offset, cur_threads);
                      }});
      else
        ks.push_back({"ceiling: VNNI peak", q_bytes, [&](int uses) {
                        time_vnni(int64_t(ops * uses / 2048 / cur_threads) + 1, cur_threads);
                      }});
      ks.push_back({"quarot W4A4", q_bytes, [&](int uses) {
                      for (int u = 0; u < uses; ++u) {
                        quarot::quantize_activations(x.data(), M, K, 4, 1.0, a);
                        quarot::int4_gemm(wq[qi++ % wq.size()].view(N, K), a, nullptr, y.data());
                      }
                    }});
      if (!no_a16)
        ks.push_back({"quarot W4A16", q_bytes, [&](int uses) {
                        for (int u = 0; u < uses; ++u) quarot::int4_gemm_f32(wq[qi++ % wq.size()].view(N, K), x.data(), M, nullptr, y.data());
                      }});
      if (!no_a16)
        ks.push_back({"quarot W4A16 int16", q_bytes, [&](int uses) {
                        for (int u = 0; u < uses; ++u)
                          quarot::int4_gemm_a16_int16(wq[qi++ % wq.size()].view(N, K), x.data(), M, nullptr, y.data());
                      }});
      if (!no_a16 && w_group > 0)
        ks.push_back({"quarot W4A16 int16 g" + std::to_string(w_group), q_bytes + double(N * (K / w_group - 1) * 4), [&](int uses) {
                        for (int u = 0; u < uses; ++u) quarot::int4_gemm_a16_int16(grouped(wq[qi++ % wq.size()]), x.data(), M, nullptr, y.data());
                      }});
      std::size_t ggml_q4 = ks.size();  // the ratios' baseline: ggml Q4_0 when it runs
      if (g_q4) {
        ggml_q4 = ks.size();
        ks.push_back({std::string("ggml Q4_0") + (g.repack_buft ? " (repack)" : ""), double(g_q4->bytes()),
                      [&](int uses) { g_q4->run(x.data(), M, uses, y.data()); }});
        if (!no_f32)
          ks.push_back({"ggml F32", double(g_f32->bytes()), [&](int uses) { g_f32->run(x.data(), M, uses, y.data()); }});
      }
      for (std::size_t ti = 0; ti < threads.size(); ++ti) {
        const int nt = threads[ti];
        cur_threads = nt;
        omp_set_num_threads(nt);
        if (have_ggml) g.set_n_threads(g.backend, nt);
        std::vector<int> uses(ks.size());
        for (std::size_t k = 0; k < ks.size(); ++k) uses[k] = M == 1 ? copies_for(ks[k].bytes) : 1;
        std::vector<std::vector<double>> t(ks.size());
        for (std::size_t k = 0; k < ks.size(); ++k) ks[k].run(uses[k]);  // warm-up: page faults, graphs, thread pools
        for (int r = 0; r < reps; ++r)
          for (std::size_t k = 0; k < ks.size(); ++k) {
            const double t0 = tick();
            ks[k].run(uses[k]);
            t[k].push_back(since(t0) / uses[k]);
          }
        std::vector<Stats> s(ks.size());
        for (std::size_t k = 0; k < ks.size(); ++k) s[k] = stats_of(t[k]);
        for (std::size_t k = 0; k < ks.size(); ++k) {
          const double gbs = ks[k].bytes / s[k].min / 1e9, gops = ops / s[k].min / 1e9;
          // ceiling (k = 0): weight GB/s relative to the read's at M = 1, GOP/s relative to the peak's at M > 1
          const double scale = M == 1 ? ks[k].bytes / ks[0].bytes : 1.0;
          std::printf("| %lld x %lld | %d | %d | %s | %.3f | %.3f | %.1f | %.0f | %.0f%%, %.0f%% |", (long long)N, (long long)K, M, nt,
                      ks[k].name.c_str(), s[k].min * 1e3, s[k].median * 1e3, gbs, gops, 100 * scale * s[0].min / s[k].min,
                      100 * scale * s[0].median / s[k].median);
          if (ggml_q4 < ks.size() && k > 0)
            std::printf(" %.2fx, %.2fx |\n", s[ggml_q4].min / s[k].min, s[ggml_q4].median / s[k].median);
          else
            std::printf(" - |\n");
        }
        std::fflush(stdout);
      }
    }
  }
  quarot::large_free(stream_buf, stream_bytes);
  return 0;
}
