#include "core.h"

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace tna {

const char* dtype_name(DType d) {
  static const char* const names[kNumDTypes] = {"float32", "float64", "float16", "bfloat16", "int8",
                                                "uint8",   "int16",   "int32",   "int64",    "bool"};
  const int i = static_cast<int>(d);
  return i >= 0 && i < kNumDTypes ? names[i] : "unknown";
}

DType to_dtype(int code) {
  TNA_CHECK(code >= 0 && code < kNumDTypes, "dtype code must be in [0, ", kNumDTypes, "), got ", code);
  return static_cast<DType>(code);
}

namespace {
thread_local int tls_threads = 1;
}  // namespace

int num_threads() { return tls_threads; }

ThreadsScope::ThreadsScope(int n) : previous(tls_threads) {
  TNA_CHECK(n >= 1, "threads must be >= 1, got ", n);
  tls_threads = n;
}

ThreadsScope::~ThreadsScope() { tls_threads = previous; }

}  // namespace tna
