// Shared C++ helpers: argument checks with messages that name the argument, and the
// function-multiversioning attribute that gives each hot loop an AVX2 clone picked at load time.
#pragma once
#include <ATen/ATen.h>

#define TNA_CHECK_FLOATING(x)                                                            \
  TORCH_CHECK(at::isFloatingType((x).scalar_type()), #x " must be a floating-point tensor, got ", \
              (x).scalar_type())
#define TNA_CHECK_DTYPE(x, dt) \
  TORCH_CHECK((x).scalar_type() == (dt), #x " must have dtype ", (dt), ", got ", (x).scalar_type())
#define TNA_CHECK_CPU(x) TORCH_CHECK((x).device().is_cpu(), #x " must be a CPU tensor, got ", (x).device())
#define TNA_CHECK_SHAPE(x, ...)                                                              \
  TORCH_CHECK((x).sizes() == at::IntArrayRef(__VA_ARGS__), #x " must have shape ",              \
              at::IntArrayRef(__VA_ARGS__), ", got ", (x).sizes())

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
