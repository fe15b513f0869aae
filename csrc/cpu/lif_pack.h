// LIF with bit-packed spike output, CPU: the neuron of packed inference (no float spike tensor).
#pragma once
#include <cstdint>

namespace tna {

struct LifPackParams {
  float tau, v_threshold, v_reset;
  bool decay_input, soft_reset;
};

// Validates the neuron constants (clear errors naming the argument).
void check_lif_pack_params(const LifPackParams& p);

// LIF over T time steps of `rows` channels-last rows of N float32 currents, membrane from the
// reset value (0 for soft reset), spikes bit-packed along channels as in pack_spikes (format v1:
// NW = ceil(N / 64) words per row, channel n is bit n % 64 of word n / 64, bits >= N zero).
// Step t, row r: currents at x + t * x_step + r * N; words at out + t * out_step + r * NW.
// v: scratch of N floats. Single-threaded (callers parallelise over rows).
void lif_pack_rows(const float* x, int64_t x_step, int64_t rows, int64_t N, int64_t T,
                   const LifPackParams& p, uint64_t* out, int64_t out_step, float* v);

// tna::lif_pack: T steps of `rows` contiguous rows of N channels (x: [T, rows, N] float32,
// contiguous) -> out: [T, rows, ceil(N / 64)] words (contiguous), parallel over rows.
void lif_pack(const float* x, int64_t T, int64_t rows, int64_t N, const LifPackParams& p,
              uint64_t* out);

}  // namespace tna
