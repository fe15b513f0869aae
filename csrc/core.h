// The native core's shared C++: argument checks, dtype codes, half/bfloat16 storage types and the
// parallel loop. No torch header: the kernels take raw pointers, sizes, strides, dtype codes and a
// thread count, so one build of tna_kernels._C serves every torch (see setup.py).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <exception>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

#if defined(_OPENMP)
#include <omp.h>
#endif

// x86-64 builds get an AVX2 clone of each hot loop plus a portable one; the dynamic loader picks
// by CPUID. Other targets compile the portable loop only. (No FMA clone: the build uses
// -ffp-contract=off so float kernels round exactly like the torch reference.)
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(TNA_NO_CLONES)
#define TNA_MULTIVERSION __attribute__((target_clones("avx2", "default")))
// For kernels that need not round like a torch reference op by op (the twin loss has its own exp):
// an x86-64-v3 clone (AVX2 + FMA); the file opts into contraction with TNA_ALLOW_FMA.
#define TNA_MULTIVERSION_FMA __attribute__((target_clones("arch=x86-64-v3", "default")))
#define TNA_ALLOW_FMA _Pragma("GCC optimize(\"fp-contract=fast\")")
// Kernels that need an AVX2-only instruction (a 32-byte non-temporal store) in their AVX2 form,
// which target_clones cannot give (one body serves both clones), dispatch by hand on this.
#define TNA_AVX2_DISPATCH 1
#else
#define TNA_MULTIVERSION
#define TNA_MULTIVERSION_FMA
#define TNA_ALLOW_FMA
#endif

namespace tna {

// ---- Errors -------------------------------------------------------------------------------------
// A failed check throws tna::Error (a std::runtime_error: RuntimeError in Python) whose message
// names the argument and what was expected, e.g. TNA_CHECK(K >= 1, "K must be >= 1, got ", K).
struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

template <typename... Args>
[[noreturn]] void fail(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  throw Error(os.str());
}

#define TNA_CHECK(cond, ...)             \
  do {                                   \
    if (!(cond)) ::tna::fail(__VA_ARGS__); \
  } while (0)

// ---- Dtype codes ----------------------------------------------------------------------------------
// The codes Python passes for a tensor's dtype. C++ owns them; Python reads them from
// tna_kernels._C.DTYPES (name -> code), so the two cannot disagree.
enum class DType : int {
  kFloat32 = 0,
  kFloat64 = 1,
  kFloat16 = 2,
  kBFloat16 = 3,
  kInt8 = 4,
  kUInt8 = 5,
  kInt16 = 6,
  kInt32 = 7,
  kInt64 = 8,
  kBool = 9,
};
constexpr int kNumDTypes = 10;
const char* dtype_name(DType d);  // "float32", ... (torch's names)
DType to_dtype(int code);         // checks the code

// IEEE binary16 storage (round to nearest even from float, exact to float): bit-identical to
// c10::Half, so results match torch's half kernels. The conversions are c10's (FP16 library,
// fp16_ieee_{from,to}_fp32_value): a few integer and float operations, inline and vectorisable.
// (_Float16 casts compile to libgcc calls, __truncsfhf2 / __extendhfsf2, on x86-64 without F16C:
// LIF forward + backward on [4, 1M] float16 took 13x the time with them.)
struct half_t {
  uint16_t bits;
  half_t() = default;
  half_t(float f) : bits(from_float(f)) {}  // NOLINT: implicit like c10::Half
  operator float() const { return to_float(bits); }  // NOLINT
  static uint32_t f32_bits(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    return u;
  }
  static float f32_from(uint32_t u) {
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  }
  static uint16_t from_float(float f) {
    const float scale_to_inf = f32_from(uint32_t(239) << 23);   // 0x1.0p+112f
    const float scale_to_zero = f32_from(uint32_t(17) << 23);   // 0x1.0p-110f
    float base = (std::fabs(f) * scale_to_inf) * scale_to_zero;
    const uint32_t w = f32_bits(f);
    const uint32_t shl1_w = w + w;
    const uint32_t sign = w & 0x80000000u;
    uint32_t bias = shl1_w & 0xFF000000u;
    if (bias < 0x71000000u) bias = 0x71000000u;
    base = f32_from((bias >> 1) + 0x07800000u) + base;
    const uint32_t b = f32_bits(base);
    const uint32_t exp_bits = (b >> 13) & 0x00007C00u;
    const uint32_t mantissa_bits = b & 0x00000FFFu;
    const uint32_t nonsign = exp_bits + mantissa_bits;
    return static_cast<uint16_t>((sign >> 16) | (shl1_w > 0xFF000000u ? 0x7E00u : nonsign));
  }
  static float to_float(uint16_t h) {
    const uint32_t w = uint32_t(h) << 16;
    const uint32_t sign = w & 0x80000000u;
    const uint32_t two_w = w + w;
    const float exp_scale = f32_from(0x7800000u);  // 0x1.0p-112f
    const float normalized = f32_from((two_w >> 4) + (uint32_t(0xE0) << 23)) * exp_scale;
    const float denormalized = f32_from((two_w >> 17) | (uint32_t(126) << 23)) - 0.5f;
    const uint32_t result =
        sign | (two_w < (uint32_t(1) << 27) ? f32_bits(denormalized) : f32_bits(normalized));
    return f32_from(result);
  }
};

// bfloat16 storage: round to nearest even, NaN -> quiet NaN, as c10::BFloat16.
struct bf16_t {
  uint16_t bits;
  bf16_t() = default;
  bf16_t(float f) : bits(from_float(f)) {}  // NOLINT
  operator float() const { return to_float(bits); }  // NOLINT
  static uint16_t from_float(float f) {
    if (std::isnan(f)) return 0x7FC0;
    uint32_t u;
    std::memcpy(&u, &f, 4);
    u += 0x7FFFu + ((u >> 16) & 1u);
    return static_cast<uint16_t>(u >> 16);
  }
  static float to_float(uint16_t b) {
    uint32_t u = uint32_t(b) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  }
};
static_assert(sizeof(half_t) == 2 && sizeof(bf16_t) == 2);

// Type in which a kernel computes for a storage type (at::opmath_type's rule).
template <typename T> struct opmath { using type = T; };
template <> struct opmath<half_t> { using type = float; };
template <> struct opmath<bf16_t> { using type = float; };
template <typename T> using opmath_t = typename opmath<T>::type;

template <typename T> struct type_tag { using type = T; };

// Calls f(type_tag<scalar_t>{}) for a floating dtype; anything else fails naming `what`.
template <typename F>
decltype(auto) dispatch_floating(DType d, const char* what, F&& f) {
  switch (d) {
    case DType::kFloat32: return f(type_tag<float>{});
    case DType::kFloat64: return f(type_tag<double>{});
    case DType::kFloat16: return f(type_tag<half_t>{});
    case DType::kBFloat16: return f(type_tag<bf16_t>{});
    default: fail(what, " must be a floating-point tensor (float32, float64, float16, bfloat16), got ",
                  dtype_name(d));
  }
}

// Every dtype with a code (floating, integer and bool), for kernels such as pack_spikes.
template <typename F>
decltype(auto) dispatch_all(DType d, F&& f) {
  switch (d) {
    case DType::kFloat32: return f(type_tag<float>{});
    case DType::kFloat64: return f(type_tag<double>{});
    case DType::kFloat16: return f(type_tag<half_t>{});
    case DType::kBFloat16: return f(type_tag<bf16_t>{});
    case DType::kInt8: return f(type_tag<int8_t>{});
    case DType::kUInt8: return f(type_tag<uint8_t>{});
    case DType::kInt16: return f(type_tag<int16_t>{});
    case DType::kInt32: return f(type_tag<int32_t>{});
    case DType::kInt64: return f(type_tag<int64_t>{});
    case DType::kBool: return f(type_tag<bool>{});
  }
  fail("unknown dtype code ", static_cast<int>(d));
}

// ---- Threads --------------------------------------------------------------------------------------
// The thread count of the op being run: Python passes torch.get_num_threads() with every call and
// the binding sets it for the call's duration (ThreadsScope). The OpenMP runtime is the libgomp
// torch already loaded (same soname), so our workers are torch's workers: no second pool.
int num_threads();
struct ThreadsScope {
  explicit ThreadsScope(int n);
  ~ThreadsScope();
  ThreadsScope(const ThreadsScope&) = delete;
  ThreadsScope& operator=(const ThreadsScope&) = delete;
  int previous;
};

// at::parallel_for's contract: f(b, e) over chunks of [begin, end), at most num_threads() of
// them, each at least `grain` long (one chunk, on the caller, when the range is shorter or we are
// already inside a parallel region). An exception in any chunk is rethrown on the caller.
template <typename F>
void parallel_for(int64_t begin, int64_t end, int64_t grain, const F& f) {
  if (begin >= end) return;
  const int64_t range = end - begin;
  int64_t n = num_threads();
  if (grain > 0) n = std::min<int64_t>(n, (range + grain - 1) / grain);
#if defined(_OPENMP)
  if (n > 1 && !omp_in_parallel()) {
    std::exception_ptr error;
#pragma omp parallel num_threads(static_cast<int>(n))
    {
      const int64_t threads = omp_get_num_threads();
      const int64_t chunk = (range + threads - 1) / threads;
      const int64_t b = begin + omp_get_thread_num() * chunk;
      if (b < end) {
        try {
          f(b, std::min(end, b + chunk));
        } catch (...) {
#pragma omp critical(tna_parallel_error)
          if (!error) error = std::current_exception();
        }
      }
    }
    if (error) std::rethrow_exception(error);
    return;
  }
#endif
  (void)n;
  f(begin, end);
}

// ---- Pointers from Python ---------------------------------------------------------------------
// Python passes tensors as data_ptr() integers (0 for None).
template <typename T>
inline T* as_ptr(uintptr_t p) {
  return reinterpret_cast<T*>(p);
}

// ---- CPU features -------------------------------------------------------------------------------

#if defined(__x86_64__) && defined(__GNUC__)
// Whether this CPU runs AVX2 (asked once): the hand-written AVX2 paths (target("avx2") functions)
// dispatch on it and keep a portable path beside.
inline bool cpu_has_avx2() {
  static const bool yes = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2");
  }();
  return yes;
}
#endif

}  // namespace tna
