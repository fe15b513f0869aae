// The ternary CPU kernels of the native core (ternary_pack.cpp, ternary_gemm.cpp,
// ternary_linear.cpp, ternary_conv.cpp): plain C++ on raw pointers, no torch header. Python
// (tna_kernels/ops/ternary.py) checks the tensors' dtypes, devices and shapes, allocates the
// outputs and passes contiguous data; these functions check what only the data or the
// environment can tell (code values, packed words, TNA_TERNARY_ISA / TNA_TERNARY_ALGO) and throw
// tna::Error with the messages of the former libtorch kernels.
//
// The packed format (v1) is specified in docs/FORMAT.md; its version is exported to Python
// (_C.TERNARY_FORMAT_VERSION) and checked against tna_kernels.formats when the package loads. With
// spikes S and code planes P, N packed that way, exactly:
//   sum_k s[k] c[k] = sum_i popcount(S[i] & P[i]) - popcount(S[i] & N[i]).
#pragma once

#include <cstdint>
#include <vector>

#include "../core.h"
#include "lif_pack.h"

// x86-64 GCC builds compile AVX2 and AVX-512 kernels next to the portable ones (function target
// attributes) and pick one at run time (select_isa); other targets compile the portable ones only.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define TNA_HAVE_X86_KERNELS 1
#define TNA_AVX2 __attribute__((target("avx2,popcnt,bmi")))
#define TNA_AVX512 __attribute__((target("avx512f,avx512bw,avx512vpopcntdq,popcnt,bmi")))
#endif

namespace tna::ternary {

// The packed-format version this build reads and writes. Python owns the number
// (tna_kernels.reference.TERNARY_FORMAT_VERSION) and checks at import that this one (exported as
// tna_kernels._C.TERNARY_FORMAT_VERSION) equals it.
constexpr int64_t kFormatVersion = 1;
// Ternariser methods, in the order of the `method` index ternarize() takes; Python checks at import
// that they equal tna_kernels.reference.TERNARY_METHODS (exported as _C.TERNARY_METHODS).
enum class Method : int { kTwn = 0, kAbsmean = 1 };
constexpr const char* kMethodNames[] = {"twn", "absmean"};
constexpr int kNumMethods = 2;

inline int64_t words_for(int64_t k) { return (k + 63) / 64; }
// A spike conv's gathered row (and regrouped weight plane) with C channels and `taps` taps: taps
// share a word when C <= 32 (per = 64 / C of them), else each tap has its own CW words.
inline int64_t taps_per_word(int64_t C, int64_t taps) { return taps > 1 && C <= 32 ? 64 / C : 1; }
inline int64_t conv_row_words(int64_t C, int64_t taps) {
  const int64_t per = taps_per_word(C, taps);
  return per > 1 ? (taps + per - 1) / per : taps * words_for(C);
}

// "version: this build reads packed ternary format v1 only, got v<version> (...)"
void check_version(int64_t version);

// ---- the GEMM engine (ternary_gemm.cpp) ---------------------------------------------------------

// Instruction set of the popcount kernels. select_isa() = the best this CPU supports, or the one the
// environment variable TNA_TERNARY_ISA=scalar|avx2|avx512 forces (read on every call; tests use it
// to cover every path).
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
// Columns of the K-major copy of N output channels: ceil(N / 128) * 128.
inline int64_t kmajor_ld(int64_t N) { return (N + 127) / 128 * 128; }
// K-major codes of rows W [N, 2, KW] into out int8 [KW * 64, kmajor_ld(N)], every byte written
// (padding columns zero).
void kmajor_codes(const uint64_t* W, int64_t N, int64_t KW, int8_t* out);
// A K-major copy built per call (no cached one given): 64-byte aligned scratch.
struct KmajorBuffer {
  int8_t* data = nullptr;
  const int8_t* build(const uint64_t* W, int64_t N, int64_t KW);
  KmajorBuffer() = default;
  KmajorBuffer(const KmajorBuffer&) = delete;
  KmajorBuffer& operator=(const KmajorBuffer&) = delete;
  ~KmajorBuffer();
};
void event_gemm_rows(Isa isa, const uint64_t* S, int64_t lds, int64_t m_count, const int8_t* Wk,
                     int64_t ldk, int64_t KW, int64_t N, const float* scale, const float* bias,
                     float* out, int64_t ldo);
// Fraction of set bits among `bits_total` (the padding bits are zero).
double spike_density(const uint64_t* S, int64_t words, int64_t bits_total);

// ---- packing, ternariser, decoding (ternary_pack.cpp) -------------------------------------------

// codes int8 [rows, K] -> out [rows, 2, KW]. Throws "codes must contain only -1, 0 and +1
// (ternary); found <v> at flat index <i>" on any other value.
void pack_ternary(const int8_t* codes, int64_t rows, int64_t K, int64_t* out);
// packed [rows, 2, KW] -> out int8 [rows, K]; rejects invalid words (check_packed_rows, "packed").
void unpack_ternary(const int64_t* packed, int64_t rows, int64_t K, int8_t* out);
// spikes of `dtype` (any dtype code), viewed as [A, K, P], packed along K -> out [A, P, KW].
// Throws "spikes must contain only 0 and 1; found <v> at flat index <i>".
void pack_spikes(const void* spikes, DType dtype, int64_t A, int64_t K, int64_t P, int64_t* out);
// bits [rows, KW] -> out uint8 [rows, K]; rejects padding bits.
void unpack_spikes(const int64_t* bits, int64_t rows, int64_t K, uint8_t* out);
// Ternariser over w (floating `dtype`) viewed as [N, R] (dim 0 = output channel): codes int8
// [N, R], scale float32 [N], and when `packed` is not null the codes packed along their last axis
// (of length K_last, which divides N * R) into packed [N * R / K_last, 2, ceil(K_last / 64)].
void ternarize(const void* w, DType dtype, int64_t N, int64_t R, Method method, bool per_channel,
               int64_t K_last, int8_t* codes, float* scale, int64_t* packed);
// Decode packed [rows, 2, KW] into dense codes out [rows, K] of `dtype` (float32, float64, int8).
void decode_codes(const int64_t* packed, int64_t rows, int64_t K, DType dtype, void* out);
// Rejects rows with a bit in both planes or a padding bit (k >= K) set: such words would make the
// popcount identity silently wrong. "<name> is not valid format-v1 data: row <r> has ...".
void check_packed_rows(const int64_t* packed, int64_t rows, int64_t K, const char* name);
// In place y = y * scale[c] + bias[c] (two roundings, as the reference) over float32 y viewed as
// [outer, N, inner]; bias may be null.
void scale_bias_f32(float* y, int64_t outer, int64_t N, int64_t inner, const float* scale,
                    const float* bias);

// ---- linear (ternary_linear.cpp) ----------------------------------------------------------------

// Rows up to which float32 x @ codes^T uses the direct kernel (measured crossover); above it the
// codes are decoded in blocks and the GEMM goes to torch.
constexpr int64_t kDirectMaxM = 12;
// y [M, N] = (x [M, K] @ codes^T) * scale + bias (float32, two roundings as scale_bias_f32; no
// epilogue when scale is null, bias may be null), 1 <= M <= kDirectMaxM, by the direct kernel of
// the selected ISA. Validates W (check_packed_rows, "packed_w") first.
void ternary_linear_direct(const float* x, int64_t M, int64_t K, const int64_t* W, int64_t N,
                           const float* scale, const float* bias, float* y);
// Decoded-block width (columns, a multiple of 64) of the float32 GEMM path for N x K weights, or 0
// where the codes are decoded whole (scalar ISA, or N = 0). TNA_GEMM_BLOCK (floats) overrides the
// 8 MiB default block.
int64_t gemm_block_cols(int64_t N, int64_t K);
// Columns [k0, k1) of the N packed rows, decoded to float32: out[n * ldo + (k - k0)] (k0 a
// multiple of 64).
void decode_block_f32(const int64_t* W, int64_t N, int64_t K, int64_t k0, int64_t k1, float* out,
                      int64_t ldo);
// y [M, N] float32 = spikes S [M, KW] x packed W [N, 2, KW] with scale/bias fused (popcount or
// event-driven kernel by density). kmajor: the cached K-major copy (ternary_kmajor) or null.
void spike_ternary_linear(const int64_t* S, int64_t M, const int64_t* W, int64_t N, int64_t K,
                          const float* scale, const float* bias, const int8_t* kmajor, float* y);

// ---- conv2d (ternary_conv.cpp) -------------------------------------------------------------------

// Geometry of a spike conv: spikes [B, H, W, CW] packed along C channels, weights
// [N, kh, kw, 2, CW], stride / padding / dilation (h, w).
struct ConvShape {
  int64_t B, H, W, C, N, kh, kw;
  int64_t sh, sw, ph, pw, dh, dw;
};
int64_t conv_out_size(int64_t in, int64_t k, int64_t s, int64_t p, int64_t d);
// y float32 [B, N, OH, OW] in channels-last memory (row-major [B * OH * OW, N]).
void spike_ternary_conv2d(const ConvShape& g, const int64_t* S, const int64_t* W, const float* scale,
                          const float* bias, const int8_t* kmajor, float* y);
// The conv with the LIF of lif_pack as its epilogue: spikes [T * B', H, W, CW] (time-major) ->
// packed spikes out [T * B', OH, OW, ceil(N / 64)].
void spike_ternary_conv2d_lif(const ConvShape& g, const int64_t* S, const int64_t* W,
                              const float* scale, const float* bias, int64_t T,
                              const LifPackParams& lif, const int8_t* kmajor, int64_t* out);
// K-major copy of packed [N, taps, 2, CW] (taps = 1: linear) for the event-driven kernels:
// out int8 [conv_row_words(K, taps) * 64, kmajor_ld(N)] (rows: the bits of a gathered row). Validates
// the words ("packed_w").
void ternary_kmajor(const int64_t* W, int64_t N, int64_t taps, int64_t K, int8_t* out);

}  // namespace tna::ternary
