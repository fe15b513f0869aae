// Shared pieces of the ternary CPU kernels (ternary_pack.cpp, ternary_gemm.cpp, ternary_linear.cpp,
// ternary_conv.cpp).
//
// Packed format v1 (docs/FORMAT.md is the contract): codes c in {-1, 0, +1} of shape [..., K] pack
// along the last axis into int64 words [..., 2, KW], KW = ceil(K / 64). Plane 0 is P (bit set <=>
// c = +1), plane 1 is N (bit set <=> c = -1); bit j of word i is element k = 64 i + j (little-endian
// bit order inside a little-endian uint64); bits k >= K are zero. Spikes s in {0, 1} of shape
// [..., K] pack the same way into [..., KW] (one plane). Then, exactly,
//   sum_k s[k] c[k] = sum_i popcount(S[i] & P[i]) - popcount(S[i] & N[i]).
#pragma once
#include <ATen/ATen.h>

#include <cstdint>
#include <vector>

// x86-64 GCC builds compile AVX2 and AVX-512 kernels next to the portable ones (function target
// attributes) and pick one at run time (select_isa); other targets compile the portable ones only.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define TNA_HAVE_X86_KERNELS 1
#define TNA_AVX2 __attribute__((target("avx2,popcnt,bmi")))
#define TNA_AVX512 __attribute__((target("avx512f,avx512bw,avx512vpopcntdq,popcnt,bmi")))
#endif

namespace tna::ternary {

constexpr int64_t kFormatVersion = 1;

inline int64_t words_for(int64_t k) { return (k + 63) / 64; }

inline void check_version(int64_t version) {
  TORCH_CHECK(version == kFormatVersion, "version: this build reads packed ternary format v",
              kFormatVersion, " only, got v", version,
              " (re-pack the weights with tna_kernels.functional.pack_ternary)");
}

// Instruction set of the popcount kernels. kAuto = the best this CPU supports; the environment
// variable TNA_TERNARY_ISA=scalar|avx2|avx512 forces one (tests use it to cover every path).
enum class Isa { kScalar = 0, kAvx2 = 1, kAvx512 = 2 };
Isa select_isa();
const char* isa_name(Isa isa);

// Tile of the spike x ternary GEMM with the epilogue fused:
//   out[m * ldo + n] = float(sum_i popcount(S[m][i] & P[n][i]) - popcount(S[m][i] & N[n][i]))
//                      * scale[n] + bias[n]            (bias may be null; no FMA contraction)
// S: m_count rows of KW words, row stride lds. W: the packed rows n in [n_begin, n_end), each
// 2 * KW words (P then N), row n at W + n * 2 * KW. Single-threaded; callers parallelise.
void spike_gemm_tile(Isa isa, const uint64_t* S, int64_t lds, int64_t m_count, const uint64_t* W,
                     int64_t KW, int64_t n_begin, int64_t n_end, const float* scale,
                     const float* bias, float* out, int64_t ldo);

// Event-driven alternative for sparse spikes (avx2/avx512 only): for every set bit k of a spike
// row, add the K-major int8 code row Wk[k, :] (ldk columns, from kmajor_codes) into int16
// accumulators; same epilogue and bit-exact result as spike_gemm_tile. Rows of S have KW words.
enum class Algo { kPopcount = 0, kEvent = 1 };
// Density below which the event loop beats popcount (measured on Zen 4, bench_ternary.py), and
// the largest K-major copy (bytes) that still sits in L2.
constexpr double kEventDensityAvx2 = 0.35;
constexpr double kEventDensityAvx512 = 0.20;
constexpr double kEventMaxBytes = 1 << 20;
bool event_supported(Isa isa, int64_t KW, int64_t N);
// TNA_TERNARY_ALGO=popcount|event forces one; otherwise by density, ISA and weight size.
// `prepacked`: the caller passes a cached K-major copy, so building it costs nothing.
Algo select_algo(Isa isa, int64_t KW, int64_t N, double density, bool prepacked);
// K-major codes of rows W [N, 2, KW]: int8 [KW * 64, ldk], ldk = ceil(N / 128) * 128, zero padded.
at::Tensor kmajor_codes(const uint64_t* W, int64_t N, int64_t KW);
void check_kmajor(const at::Tensor& kmajor, int64_t KW, int64_t N);
void event_gemm_rows(Isa isa, const uint64_t* S, int64_t lds, int64_t m_count, const int8_t* Wk,
                     int64_t ldk, int64_t KW, int64_t N, const float* scale, const float* bias,
                     float* out, int64_t ldo);
// Fraction of set bits among `bits_total` (the padding bits are zero).
double spike_density(const uint64_t* S, int64_t words, int64_t bits_total);

// Decode packed rows [rows, 2, KW] into dense codes as `dst` (dtype float/double/int8), [rows, K].
void decode_codes(const at::Tensor& packed, int64_t rows, int64_t K, at::Tensor& dst);

// Common argument checks for a packed weight tensor [N, ..., 2, KW] against the logical K.
void check_packed(const at::Tensor& packed_w, const char* name);
// Rejects rows with a bit in both planes or a padding bit (k >= K) set: such words would make the
// popcount identity silently wrong. `packed` is contiguous [rows, 2, KW].
void check_packed_rows(const at::Tensor& packed, int64_t rows, int64_t K, const char* name);
// In place y = y * scale[c] + bias[c] along `channel_dim` (two roundings, as the reference); one
// fused pass for contiguous float32, torch ops otherwise.
void scale_bias_(at::Tensor& y, int64_t channel_dim, const at::Tensor& scale,
                 const std::optional<at::Tensor>& bias);
void check_scale_bias(const at::Tensor& scale, const std::optional<at::Tensor>& bias, int64_t N);

}  // namespace tna::ternary
