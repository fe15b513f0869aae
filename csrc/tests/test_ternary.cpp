// C++ tests of the ternary ops through the dispatcher (ctest, no Python): the golden packing
// example of docs/FORMAT.md, spike x ternary against a naive integer loop on every kernel path this
// CPU has (TNA_TERNARY_ISA x TNA_TERNARY_ALGO), and the error messages of bad input.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <cstdlib>
#include <iostream>
#include <optional>
#include <string>

namespace {

int failures = 0;

#define EXPECT(cond)                                                                   \
  do {                                                                                 \
    if (!(cond)) {                                                                     \
      std::cerr << __FILE__ << ":" << __LINE__ << ": EXPECT(" #cond ") failed\n";      \
      ++failures;                                                                      \
    }                                                                                  \
  } while (0)

template <typename Sig>
c10::TypedOperatorHandle<Sig> op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Sig>();
}

using OptT = std::optional<at::Tensor>;

at::Tensor pack_ternary(const at::Tensor& c) {
  static auto h = op<at::Tensor(const at::Tensor&)>("tna::pack_ternary");
  return h.call(c);
}

at::Tensor pack_spikes(const at::Tensor& s) {
  static auto h = op<at::Tensor(const at::Tensor&, int64_t)>("tna::pack_spikes");
  return h.call(s, -1);
}

at::Tensor spike_linear(const at::Tensor& bits, const at::Tensor& w, const at::Tensor& scale,
                        const OptT& bias, int64_t K, int64_t version) {
  static auto h = op<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const OptT&,
                                int64_t, int64_t, const OptT&)>("tna::spike_ternary_linear");
  return h.call(bits, w, scale, bias, K, version, std::nullopt);
}

std::string cpu_isa() {
  static auto h = op<std::string()>("tna::ternary_cpu_isa");
  return h.call();
}

template <typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const c10::Error& e) {
    return e.what_without_backtrace();
  }
  return "";
}

bool contains(const std::string& s, const char* part) { return s.find(part) != std::string::npos; }

void test_golden_packing() {
  at::Tensor c = at::zeros({2, 65}, at::kChar);
  auto a = c.accessor<int8_t, 2>();
  a[0][0] = a[0][3] = a[0][63] = 1;
  a[0][1] = a[0][64] = -1;
  for (int k = 0; k < 65; ++k) a[1][k] = 1;
  const at::Tensor w = pack_ternary(c);
  EXPECT(w.sizes() == at::IntArrayRef({2, 2, 2}));
  auto v = w.accessor<int64_t, 3>();
  EXPECT(static_cast<uint64_t>(v[0][0][0]) == ((1ull << 0) | (1ull << 3) | (1ull << 63)));
  EXPECT(v[0][0][1] == 0);
  EXPECT(v[0][1][0] == 2 && v[0][1][1] == 1);
  EXPECT(v[1][0][0] == -1 && v[1][0][1] == 1 && v[1][1][0] == 0 && v[1][1][1] == 0);
}

void test_spike_linear_all_paths() {
  at::manual_seed(0);
  const int64_t M = 37, N = 70, K = 300;
  const at::Tensor c = at::randint(-1, 2, {N, K}, at::kChar);
  const at::Tensor s = (at::rand({M, K}) < 0.15).to(at::kFloat);
  const at::Tensor scale = at::rand({N}) + 0.1, bias = at::randn({N});
  // Naive reference: exact integer sums, then the float32 epilogue in the same order.
  at::Tensor ref = at::empty({M, N}, at::kFloat);
  auto ca = c.accessor<int8_t, 2>();
  auto sa = s.accessor<float, 2>();
  for (int64_t m = 0; m < M; ++m) {
    for (int64_t n = 0; n < N; ++n) {
      int64_t acc = 0;
      for (int64_t k = 0; k < K; ++k) acc += sa[m][k] == 1.f ? ca[n][k] : 0;
      ref[m][n] = static_cast<float>(acc) * scale[n].item<float>() + bias[n].item<float>();
    }
  }
  const at::Tensor w = pack_ternary(c), bits = pack_spikes(s);
  int paths = 0;
  for (const char* isa : {"scalar", "avx2", "avx512"}) {
    setenv("TNA_TERNARY_ISA", isa, 1);
    if (!error_of([] { cpu_isa(); }).empty()) continue;  // not on this CPU
    EXPECT(cpu_isa() == isa);
    for (const char* algo : {"popcount", "event"}) {
      setenv("TNA_TERNARY_ALGO", algo, 1);
      if (std::string(isa) == "scalar" && std::string(algo) == "event") {
        EXPECT(contains(error_of([&] { spike_linear(bits, w, scale, bias, K, 1); }),
                        "TNA_TERNARY_ALGO=event needs the avx2 or avx512 kernels"));
        continue;
      }
      EXPECT(at::equal(spike_linear(bits, w, scale, bias, K, 1), ref));
      ++paths;
    }
  }
  unsetenv("TNA_TERNARY_ISA");
  unsetenv("TNA_TERNARY_ALGO");
  EXPECT(paths >= 1);
}

void test_errors() {
  at::Tensor c = at::zeros({3, 10}, at::kChar);
  c[1][4] = 2;
  EXPECT(contains(error_of([&] { pack_ternary(c); }), "found 2 at flat index 14"));
  const at::Tensor w = pack_ternary(at::zeros({3, 10}, at::kChar));
  const at::Tensor bits = pack_spikes(at::zeros({2, 10}));
  EXPECT(contains(error_of([&] { spike_linear(bits, w, at::ones({3}), std::nullopt, 10, 2); }),
                  "version: this build reads packed ternary format v1 only, got v2"));
  EXPECT(contains(error_of([&] { spike_linear(bits, w, at::ones({4}), std::nullopt, 10, 1); }),
                  "scale must have shape [3]"));
}

}  // namespace

int main() {
  test_golden_packing();
  test_spike_linear_all_paths();
  test_errors();
  if (failures) {
    std::cerr << failures << " check(s) failed\n";
    return 1;
  }
  std::cout << "test_ternary: all checks passed\n";
  return 0;
}
