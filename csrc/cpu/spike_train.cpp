// Event-driven weight gradient of spike-input conv2d / linear layers (spike_train.h).
//
// grad_w[n, c, r, s] = sum over positions where spike x[b, c, ih, iw] = 1 of grad_y at the output
// position that tap (r, s) maps (ih, iw) to. Organisation, per work unit (a chunk of output
// channels x a block of input channels; units own disjoint parts of grad_w, so no reduction):
//   for each tile of samples (its grad_y rows fit in L2; other layouts than channels-last are
//   transposed into a per-thread tile buffer first):
//     list the tile's spikes per channel (a counting sort of the set bits: one pass counts, one fills);
//     for each channel, each tap, each chunk of the unit's columns: sum the grad_y rows of the
//     channel's spikes in registers (up to 256 floats: 16 zmm), then add it to the unit's grad_w^T.
// The work is spikes x taps x N/16 vector adds, against B*OH*OW*C*taps*N multiply-adds for the dense
// GEMM: at 15 % density about 13x fewer operations, but each add gathers a grad_y row from L2 while
// the dense GEMM reuses its operands in registers, so the measured gain is ~2x at 15 % density on
// one Zen 4 core (the VGG layers of benchmarks/bench_spike_train.py); dense wins above ~35 %
// (tna_kernels/ops/spike_train.py chooses per layer by measuring). No unpacked float copy of the
// input exists.
#include "spike_train.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "ternary.h"

namespace tna {
namespace {

using ternary::Isa;

typedef float v16f __attribute__((vector_size(64)));
typedef float v8f __attribute__((vector_size(32)));
typedef float v4f __attribute__((vector_size(16)));

// One spike of the tile: its sample in the tile and its input row/column shifted by the padding, so
// that tap (r, s) reaches output (h - r*dh, w - s*dw) / stride.
struct Event {
  int32_t b, h, w;
};

struct Problem {
  const float* G;  // grad_y rows of the tile's first sample, [*, OH, OW, ld], at this unit's first column
  int64_t ld;      // row stride of G
  int64_t N;       // the columns this unit sums (a chunk of the output channels)
  int64_t OH, OW;
  ConvGeometry g;
};

// acc = sum of the chunk [co, co + NV*lanes) of the grad_y rows the events reach through tap
// (r, s); then out[0 .. NV*lanes) += acc. Loads and stores go through memcpy (unaligned).
template <typename V, int NV, bool UNIT_STRIDE>
__attribute__((always_inline)) inline void accumulate(const Problem& p, const Event* ev, int64_t n_ev,
                                                      int64_t r, int64_t s, int64_t co, float* out) {
  constexpr int L = sizeof(V) / sizeof(float);
  V acc[NV];
  for (int v = 0; v < NV; ++v) acc[v] = V{} - V{};  // zeros for float and vector types alike
  const int64_t rh = r * p.g.dh, sw_ = s * p.g.dw;
  const float* G = p.G + co;
  for (int64_t e = 0; e < n_ev; ++e) {
    int64_t oh = ev[e].h - rh, ow = ev[e].w - sw_;
    if constexpr (!UNIT_STRIDE) {
      if (oh < 0 || ow < 0 || oh % p.g.sh != 0 || ow % p.g.sw != 0) continue;
      oh /= p.g.sh;
      ow /= p.g.sw;
    }
    if (static_cast<uint64_t>(oh) >= static_cast<uint64_t>(p.OH) ||
        static_cast<uint64_t>(ow) >= static_cast<uint64_t>(p.OW))
      continue;
    const float* row = G + ((ev[e].b * p.OH + oh) * p.OW + ow) * p.ld;
    for (int v = 0; v < NV; ++v) {
      V x;
      std::memcpy(&x, row + v * L, sizeof(V));
      acc[v] += x;
    }
  }
  for (int v = 0; v < NV; ++v) {
    V o;
    std::memcpy(&o, out + v * L, sizeof(V));
    o += acc[v];
    std::memcpy(out + v * L, &o, sizeof(V));
  }
}

// The chunk [co, co + NV*lanes) and, halving NV, what is left of N below it (a multiple of the
// lanes needs at most one pass per power of two; single floats take the last lanes - 1 columns).
template <typename V, int NV, bool UNIT_STRIDE>
__attribute__((always_inline)) inline void tail_chunks(const Problem& p, const Event* ev, int64_t n_ev, int64_t r,
                                                       int64_t s, int64_t co, float* out) {
  constexpr int64_t L = sizeof(V) / sizeof(float);
  if (co + NV * L <= p.N) {
    accumulate<V, NV, UNIT_STRIDE>(p, ev, n_ev, r, s, co, out + co);
    co += NV * L;
  }
  if constexpr (NV > 1) {
    tail_chunks<V, NV / 2, UNIT_STRIDE>(p, ev, n_ev, r, s, co, out);
  } else {
    for (; co < p.N; ++co) accumulate<float, 1, UNIT_STRIDE>(p, ev, n_ev, r, s, co, out + co);
  }
}

// The three taps (r, 0..2) of a 3-wide kernel at stride 1 together: an event reaches three
// neighbouring output positions of one row, so one row computation serves three taps and their
// grad_y rows are adjacent in memory (3 * NV accumulators). Sums in the same order as accumulate.
template <typename V, int NV>
__attribute__((always_inline)) inline void accumulate_row3(const Problem& p, const Event* ev, int64_t n_ev,
                                                           int64_t r, int64_t co, float* out) {
  constexpr int L = sizeof(V) / sizeof(float);
  V acc[3][NV];
  for (int s = 0; s < 3; ++s)
    for (int v = 0; v < NV; ++v) acc[s][v] = V{} - V{};
  const int64_t rh = r * p.g.dh, dw = p.g.dw;
  const float* G = p.G + co;
  for (int64_t e = 0; e < n_ev; ++e) {
    const int64_t oh = ev[e].h - rh;
    if (static_cast<uint64_t>(oh) >= static_cast<uint64_t>(p.OH)) continue;
    const int64_t ow0 = ev[e].w;
    const float* row = G + (ev[e].b * p.OH + oh) * p.OW * p.ld;
    for (int s = 0; s < 3; ++s) {
      const int64_t ow = ow0 - s * dw;
      if (static_cast<uint64_t>(ow) >= static_cast<uint64_t>(p.OW)) continue;
      const float* src = row + ow * p.ld;
      for (int v = 0; v < NV; ++v) {
        V x;
        std::memcpy(&x, src + v * L, sizeof(V));
        acc[s][v] += x;
      }
    }
  }
  for (int s = 0; s < 3; ++s) {
    for (int v = 0; v < NV; ++v) {
      V o;
      std::memcpy(&o, out + s * p.N + v * L, sizeof(V));
      o += acc[s][v];
      std::memcpy(out + s * p.N + v * L, &o, sizeof(V));
    }
  }
}

// Every row of taps of a 3-wide kernel, three taps at a time, in chunks of NV vectors (the largest
// NV that divides N's columns); false when none does (the caller takes the taps one by one).
template <typename V, int NV>
__attribute__((always_inline)) inline bool rows_of_three(const Problem& p, const Event* ev, int64_t n_ev,
                                                         float* out_c) {
  constexpr int64_t L = sizeof(V) / sizeof(float);
  if (p.N % (NV * L) == 0) {
    for (int64_t r = 0; r < p.g.kh; ++r)
      for (int64_t co = 0; co < p.N; co += NV * L)
        accumulate_row3<V, NV>(p, ev, n_ev, r, co, out_c + r * 3 * p.N + co);
    return true;
  }
  if constexpr (NV > 1) {
    return rows_of_three<V, NV / 2>(p, ev, n_ev, out_c);
  } else {
    return false;
  }
}

// All taps and all of N for one channel's events: chunks of NVMAX vectors, then the tail. A 3-wide
// kernel at stride 1 takes its rows three taps at a time (chunks of at most NVMAX / 2 vectors: 3/2
// NVMAX accumulators).
template <typename V, int NVMAX, bool UNIT_STRIDE>
__attribute__((always_inline)) inline void channel_taps(const Problem& p, const Event* ev, int64_t n_ev,
                                                        float* out_c) {
  constexpr int64_t L = sizeof(V) / sizeof(float);
  const int64_t N = p.N;
  if constexpr (UNIT_STRIDE) {
    if (p.g.kw == 3 && rows_of_three<V, NVMAX / 2>(p, ev, n_ev, out_c)) return;
  }
  for (int64_t r = 0; r < p.g.kh; ++r) {
    for (int64_t s = 0; s < p.g.kw; ++s) {
      float* out = out_c + (r * p.g.kw + s) * N;
      int64_t co = 0;
      for (; co + NVMAX * L <= N; co += NVMAX * L) accumulate<V, NVMAX, UNIT_STRIDE>(p, ev, n_ev, r, s, co, out + co);
      if constexpr (NVMAX > 1) tail_chunks<V, NVMAX / 2, UNIT_STRIDE>(p, ev, n_ev, r, s, co, out);
    }
  }
}

// One entry point per instruction set (the always_inline bodies above compile with its target).
#define TNA_SPIKE_TRAIN_CHANNEL(NAME, ATTR, V, NVMAX)                                                  \
  ATTR void NAME(const Problem& p, const Event* ev, int64_t n_ev, float* out_c) {                      \
    if (p.g.sh == 1 && p.g.sw == 1) {                                                                 \
      channel_taps<V, NVMAX, true>(p, ev, n_ev, out_c);                                               \
    } else {                                                                                          \
      channel_taps<V, NVMAX, false>(p, ev, n_ev, out_c);                                              \
    }                                                                                                 \
  }

#if defined(TNA_HAVE_X86_KERNELS)
TNA_SPIKE_TRAIN_CHANNEL(channel_avx512, TNA_AVX512, v16f, 16)  // 16 zmm accumulators: 256 floats
TNA_SPIKE_TRAIN_CHANNEL(channel_avx2, TNA_AVX2, v8f, 8)         // 8 of the 16 ymm: 64 floats
#endif
TNA_SPIKE_TRAIN_CHANNEL(channel_portable, , v4f, 4)  // SSE2 on x86-64 (4 of 16 xmm), generic elsewhere

using ChannelFn = void (*)(const Problem&, const Event*, int64_t, float*);

ChannelFn channel_kernel(Isa isa) {
#if defined(TNA_HAVE_X86_KERNELS)
  if (isa == Isa::kAvx512) return channel_avx512;
  if (isa == Isa::kAvx2) return channel_avx2;
#endif
  (void)isa;
  return channel_portable;
}

// grad_y rows of one tile of samples: at most this many bytes (an eighth of a 1 MiB L2: the gathers
// miss L1 either way; 128-512 KiB measured within 15 %, smaller best), at least one sample.
constexpr int64_t kTileBytes = 128 * 1024;

}  // namespace

void spike_conv2d_grad_weight(const float* grad_y, int64_t sb, int64_t sn, int64_t sp, const uint64_t* bits,
                              float* grad_w, int64_t B, int64_t C, int64_t H, int64_t W, int64_t N, int64_t OH,
                              int64_t OW, const ConvGeometry& g) {
  TNA_CHECK(B >= 0 && C >= 1 && H >= 1 && W >= 1 && N >= 1 && OH >= 1 && OW >= 1,
            "spike_conv2d_grad_weight: bad sizes");
  TNA_CHECK(H + g.ph <= INT32_MAX && W + g.pw <= INT32_MAX, "spike_conv2d_grad_weight: input too large");
  const int64_t taps = g.kh * g.kw;
  const int64_t CW = (C + 63) / 64;
  const int64_t P = OH * OW;
  const ChannelFn kernel = channel_kernel(ternary::select_isa());
  const bool rows = sn == 1 && sp == N && sb == P * N;  // channels-last: gathered in place
  // Work units: chunks of output channels (multiples of 16 floats) x blocks of input channels. The
  // output-channel split comes first: each thread then reads (and, for other layouts than
  // channels-last, transposes) only its columns of grad_y; input-channel blocks split the rest.
  const int64_t threads = std::max<int64_t>(1, num_threads());
  const int64_t n_chunks = std::clamp<int64_t>((N + 15) / 16, 1, threads);
  const int64_t n_step = ((N + n_chunks - 1) / n_chunks + 15) / 16 * 16;
  const int64_t n_units = (N + n_step - 1) / n_step;
  const int64_t c_blocks = std::clamp<int64_t>((threads + n_units - 1) / n_units, 1, C);
  const int64_t c_step = (C + c_blocks - 1) / c_blocks;
  // The tile depends on the sizes only, never on the thread count: each sum is then grouped the
  // same way (per tile, in sample order) whatever the threads, and the result is the same bits.
  const int64_t sample_bytes = P * std::min<int64_t>(N, 128) * static_cast<int64_t>(sizeof(float));
  const int64_t tile = std::max<int64_t>(1, std::min<int64_t>(B, kTileBytes / std::max<int64_t>(1, sample_bytes)));
  parallel_for(0, n_units * c_blocks, 1, [&](int64_t u0, int64_t u1) {
    for (int64_t u = u0; u < u1; ++u) {
      const int64_t n0 = (u / c_blocks) * n_step, n1 = std::min(N, n0 + n_step), nn = n1 - n0;
      const int64_t c0 = (u % c_blocks) * c_step, c1 = std::min(C, c0 + c_step), nc = c1 - c0;
      if (nc <= 0) continue;
      std::vector<float> acc(static_cast<size_t>(nc * taps * nn), 0.0f);  // grad_w^T [c][tap][n0, n1)
      std::vector<int64_t> start(static_cast<size_t>(nc + 1));
      std::vector<Event> events;
      std::vector<float> tile_rows(rows ? 0 : static_cast<size_t>(tile * P * nn));
      const int64_t w0 = c0 / 64, w1 = (c1 - 1) / 64 + 1;
      auto word_mask = [&](int64_t w) {  // the bits of word w that are channels in [c0, c1)
        uint64_t m = ~uint64_t{0};
        if (w * 64 < c0) m &= ~uint64_t{0} << (c0 - w * 64);
        if ((w + 1) * 64 > c1) m &= ~uint64_t{0} >> ((w + 1) * 64 - c1);
        return m;
      };
      for (int64_t b0 = 0; b0 < B; b0 += tile) {
        const int64_t b1 = std::min(B, b0 + tile);
        const uint64_t* S = bits + b0 * H * W * CW;
        const int64_t positions = (b1 - b0) * H * W;
        // counting sort of the tile's spikes by channel
        std::fill(start.begin(), start.end(), 0);
        for (int64_t q = 0; q < positions; ++q) {
          for (int64_t w = w0; w < w1; ++w) {
            uint64_t m = S[q * CW + w] & word_mask(w);
            while (m) {
              ++start[static_cast<size_t>(w * 64 + __builtin_ctzll(m) - c0 + 1)];
              m &= m - 1;
            }
          }
        }
        for (int64_t c = 0; c < nc; ++c) start[c + 1] += start[c];
        if (start[nc] == 0) continue;
        events.resize(static_cast<size_t>(start[nc]));
        std::vector<int64_t> fill(start.begin(), start.end() - 1);
        for (int64_t q = 0; q < positions; ++q) {
          const Event e{static_cast<int32_t>(q / (H * W)), static_cast<int32_t>((q / W) % H + g.ph),
                        static_cast<int32_t>(q % W + g.pw)};
          for (int64_t w = w0; w < w1; ++w) {
            uint64_t m = S[q * CW + w] & word_mask(w);
            while (m) {
              events[static_cast<size_t>(fill[static_cast<size_t>(w * 64 + __builtin_ctzll(m) - c0)]++)] = e;
              m &= m - 1;
            }
          }
        }
        Problem p{grad_y + b0 * sb + n0, N, nn, OH, OW, g};
        if (!rows) {  // this tile's columns [n0, n1) as [positions, nn] rows, 16 columns at a time
          for (int64_t b = b0; b < b1; ++b) {
            const float* src = grad_y + b * sb;
            float* dst = tile_rows.data() + (b - b0) * P * nn;
            for (int64_t m0 = n0; m0 < n1; m0 += 16) {
              const int64_t m1 = std::min(n1, m0 + 16);
              for (int64_t q = 0; q < P; ++q)
                for (int64_t n = m0; n < m1; ++n) dst[q * nn + n - n0] = src[n * sn + q * sp];
            }
          }
          p.G = tile_rows.data();
          p.ld = nn;
        }
        for (int64_t c = 0; c < nc; ++c) {
          const int64_t n_ev = start[c + 1] - start[c];
          if (n_ev) kernel(p, events.data() + start[c], n_ev, acc.data() + c * taps * nn);
        }
      }
      for (int64_t n = 0; n < nn; ++n)  // grad_w [N, C, kh, kw]
        for (int64_t c = 0; c < nc; ++c)
          for (int64_t t = 0; t < taps; ++t)
            grad_w[((n0 + n) * C + c0 + c) * taps + t] = acc[(c * taps + t) * nn + n];
    }
  });
}

}  // namespace tna
