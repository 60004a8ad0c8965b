// The quantized matmul's inner loops, compiled once per instruction set
// (build.rs sets QMM_ISA and the target flags). Written with GCC/Clang vector
// extensions so one source serves AVX-512, AVX2 and portable code: a 16-lane
// float vector is one AVX-512 register, two AVX2 ones, four SSE/NEON ones.
//
// Every output accumulates in 16 lanes, 32 inputs at a time in a fixed order,
// and sums its lanes in a fixed tree, whatever the instruction set or tile
// shape: paths that fuse multiply-adds alike give bit-identical results.

#include <algorithm>
#include <array>
#include <cstring>
#include <new>
#include <utility>
#include <vector>

#include "qmm.h"

#ifndef QMM_ISA
#error "QMM_ISA must name the instruction set this file is compiled for"
#endif

namespace safeguard_kernels::QMM_ISA {

namespace {

typedef float v16f __attribute__((vector_size(64)));
typedef int32_t v16i __attribute__((vector_size(64)));
typedef uint8_t v16u8 __attribute__((vector_size(16)));

// The largest tile of (input rows × weight rows) the registers hold.
#if defined(QMM_WIDE)
constexpr int kMaxRows = 4, kMaxCols = 4;
#else
constexpr int kMaxRows = 2, kMaxCols = 2;
#endif

// From this many rows on, a weight panel is decoded once into a buffer and
// reused by every row; below it, decoding inside the loop costs less.
constexpr size_t kPanelRows = 8;

inline v16f load16(const float* p) {
  v16f v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

inline v16f splat(float f) { return v16f{} + f; }

// E2M1 code → value, indexed by the 4-bit code (bit 3 is the sign).
const v16f kE2m1 = {0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f,
                    -0.0f, -0.5f, -1.0f, -1.5f, -2.0f, -3.0f, -4.0f, -6.0f};

inline float e8m0_to_float(uint8_t e) {
  // 2^(e - 127); e = 0 is 2^-127, a subnormal, built from its bits.
  uint32_t bits = e == 0 ? 0x00400000u : uint32_t(e) << 23;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

// The 32 weights of block `block` of one weight row, in the order the
// prepared input uses: for 4-bit formats the low nibbles (even inputs) then
// the high ones (odd inputs); for 8-bit the natural order.
struct RowReader {
  const Problem& p;
  const uint8_t* bytes;   // the row's packed codes
  const uint8_t* e8m0;    // mxfp4 scales of the row
  const float* scales;    // affine scales of the row
  const float* biases;    // affine biases of the row

  RowReader(const Problem& p, uint32_t expert, int n) : p(p) {
    size_t row = size_t(expert) * p.out_dims + n;
    int bits = p.format == Format::Affine8 ? 8 : 4;
    bytes = reinterpret_cast<const uint8_t*>(p.w) + row * size_t(p.in_dims) * bits / 8;
    size_t groups = p.in_dims / p.group_size;
    e8m0 = p.e8m0 ? p.e8m0 + row * groups : nullptr;
    scales = p.scales ? p.scales + row * groups : nullptr;
    biases = p.biases ? p.biases + row * groups : nullptr;
  }

  inline void block(int b, v16f& w0, v16f& w1) const {
    int group = b * 32 / p.group_size;
    if (p.format == Format::Affine8) {
      v16u8 lo, hi;
      std::memcpy(&lo, bytes + b * 32, 16);
      std::memcpy(&hi, bytes + b * 32 + 16, 16);
      v16f s = splat(scales[group]), z = splat(biases[group]);
      w0 = __builtin_convertvector(lo, v16f) * s + z;
      w1 = __builtin_convertvector(hi, v16f) * s + z;
      return;
    }
    v16u8 packed;
    std::memcpy(&packed, bytes + b * 16, 16);
    v16i codes = __builtin_convertvector(packed, v16i);
    v16i low = codes & 15, high = codes >> 4;
    if (p.format == Format::Mxfp4) {
      v16f s = splat(e8m0_to_float(e8m0[group]));
      w0 = __builtin_shuffle(kE2m1, low) * s;
      w1 = __builtin_shuffle(kE2m1, high) * s;
    } else {
      v16f s = splat(scales[group]), z = splat(biases[group]);
      w0 = __builtin_convertvector(low, v16f) * s + z;
      w1 = __builtin_convertvector(high, v16f) * s + z;
    }
  }
};

inline float sum_lanes(v16f v) {
  float l[16];
  std::memcpy(l, &v, sizeof l);
  float a[8], b[4];
  for (int i = 0; i < 8; ++i) a[i] = l[i] + l[i + 8];
  for (int i = 0; i < 4; ++i) b[i] = a[i] + a[i + 4];
  return (b[0] + b[2]) + (b[1] + b[3]);
}

// out[rows × cols] for `rows` input rows against `cols` weight rows, the
// weights either decoded on the fly (`readers`) or read from a decoded panel.
template <int ROWS, int COLS>
void tile(int blocks, const float* const* x, const RowReader* readers, const float* const* panel,
          float* const* out) {
  v16f acc[ROWS][COLS];
  for (int r = 0; r < ROWS; ++r)
    for (int c = 0; c < COLS; ++c) acc[r][c] = v16f{};
  for (int b = 0; b < blocks; ++b) {
    v16f w0[COLS], w1[COLS];
    for (int c = 0; c < COLS; ++c) {
      if (panel) {
        w0[c] = load16(panel[c] + b * 32);
        w1[c] = load16(panel[c] + b * 32 + 16);
      } else {
        readers[c].block(b, w0[c], w1[c]);
      }
    }
    for (int r = 0; r < ROWS; ++r) {
      v16f x0 = load16(x[r] + b * 32), x1 = load16(x[r] + b * 32 + 16);
      for (int c = 0; c < COLS; ++c) {
        acc[r][c] = acc[r][c] + x0 * w0[c];
        acc[r][c] = acc[r][c] + x1 * w1[c];
      }
    }
  }
  for (int r = 0; r < ROWS; ++r)
    for (int c = 0; c < COLS; ++c) out[r][c] = sum_lanes(acc[r][c]);
}

using TileFn = void (*)(int, const float* const*, const RowReader*, const float* const*, float* const*);

template <int R, int... C>
constexpr auto tile_row(std::integer_sequence<int, C...>) {
  return std::array<TileFn, sizeof...(C)>{&tile<R, C + 1>...};
}

template <int... R>
constexpr auto tile_table(std::integer_sequence<int, R...>) {
  return std::array<std::array<TileFn, kMaxCols>, sizeof...(R)>{
      tile_row<R + 1>(std::make_integer_sequence<int, kMaxCols>{})...};
}

// kTiles[rows - 1][cols - 1]: the tile function for a partial tile too.
const auto kTiles = tile_table(std::make_integer_sequence<int, kMaxRows>{});

}  // namespace

void run_tile(const Problem& p, uint32_t expert, const RowJob* rows, size_t row_count, int n_begin, int n_end,
              const float* x_prepared) {
  const int blocks = p.in_dims / 32;
  const bool use_panel = row_count >= kPanelRows;
  std::vector<float> panel_buffer(use_panel ? size_t(kMaxCols) * p.in_dims : 0);
  for (int n0 = n_begin; n0 < n_end; n0 += kMaxCols) {
    const int cols = std::min(kMaxCols, n_end - n0);
    // Readers are plain views; building one costs a few pointer sums.
    alignas(RowReader) unsigned char reader_storage[kMaxCols][sizeof(RowReader)];
    RowReader* readers = reinterpret_cast<RowReader*>(reader_storage);
    for (int c = 0; c < cols; ++c) new (&readers[c]) RowReader(p, expert, n0 + c);
    const float* panel[kMaxCols] = {};
    if (use_panel) {
      for (int c = 0; c < cols; ++c) {
        float* dst = panel_buffer.data() + size_t(c) * p.in_dims;
        for (int b = 0; b < blocks; ++b) {
          v16f w0, w1;
          readers[c].block(b, w0, w1);
          std::memcpy(dst + b * 32, &w0, sizeof w0);
          std::memcpy(dst + b * 32 + 16, &w1, sizeof w1);
        }
        panel[c] = dst;
      }
    }
    for (size_t r0 = 0; r0 < row_count; r0 += kMaxRows) {
      const int count = int(std::min<size_t>(kMaxRows, row_count - r0));
      const float* x[kMaxRows];
      float result[kMaxRows][kMaxCols];
      float* out[kMaxRows];
      for (int r = 0; r < count; ++r) {
        x[r] = x_prepared + size_t(rows[r0 + r].x_row) * p.in_dims;
        out[r] = result[r];
      }
      kTiles[count - 1][cols - 1](blocks, x, readers, use_panel ? panel : nullptr, out);
      for (int r = 0; r < count; ++r) {
        float* dst = p.out + size_t(rows[r0 + r].out_row) * p.out_dims + n0;
        for (int c = 0; c < cols; ++c) dst[c] = result[r][c];
      }
    }
  }
}

}  // namespace safeguard_kernels::QMM_ISA
