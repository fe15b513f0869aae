// Shared pieces of the ternary CPU kernels (ternary_pack.cpp, ternary_linear.cpp, ternary_conv.cpp).
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

// Decode packed rows [rows, 2, KW] into dense codes as `dst` (dtype float/double/int8), [rows, K].
void decode_codes(const at::Tensor& packed, int64_t rows, int64_t K, at::Tensor& dst);

// Common argument checks for a packed weight tensor [N, ..., 2, KW] against the logical K.
void check_packed(const at::Tensor& packed_w, const char* name);
// Rejects rows with a bit in both planes or a padding bit (k >= K) set: such words would make the
// popcount identity silently wrong. `packed` is contiguous [rows, 2, KW].
void check_packed_rows(const at::Tensor& packed, int64_t rows, int64_t K, const char* name);
void check_scale_bias(const at::Tensor& scale, const std::optional<at::Tensor>& bias, int64_t N);

}  // namespace tna::ternary
