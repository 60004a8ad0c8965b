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

#if defined(__AVX2__)
#include <immintrin.h>
#endif

#ifndef QMM_ISA
#error "QMM_ISA must name the instruction set this file is compiled for"
#endif

namespace safeguard_kernels::QMM_ISA {

namespace {

// Registers per 16 lanes: one AVX-512, two AVX2, four SSE/NEON. Vector
// extensions wider than the machine's registers compile to spills, so the 16
// lanes are spelled out as native-width parts.
#if defined(QMM_WIDE)
constexpr int kWidth = 16;
#elif defined(__AVX2__)
constexpr int kWidth = 8;
#else
constexpr int kWidth = 4;
#endif
constexpr int kParts = 16 / kWidth;

typedef float vf __attribute__((vector_size(kWidth * 4)));
typedef int32_t vi __attribute__((vector_size(kWidth * 4)));
typedef uint8_t vu8 __attribute__((vector_size(kWidth)));
typedef int8_t vi8 __attribute__((vector_size(kWidth)));
typedef uint8_t v16u8 __attribute__((vector_size(16)));
typedef int8_t v16i8 __attribute__((vector_size(16)));

struct Lanes {
  vf part[kParts];
};

inline Lanes zero() { return Lanes{}; }

inline Lanes splat(float f) {
  Lanes l;
  for (int i = 0; i < kParts; ++i) l.part[i] = vf{} + f;
  return l;
}

inline Lanes load16(const float* p) {
  Lanes l;
  std::memcpy(&l, p, sizeof l);
  return l;
}

inline void store16(float* p, const Lanes& l) { std::memcpy(p, &l, sizeof l); }

// a · b + c, fused where the instruction set has fused multiply-adds.
inline Lanes mul_add(const Lanes& a, const Lanes& b, const Lanes& c) {
  Lanes r;
  for (int i = 0; i < kParts; ++i) r.part[i] = a.part[i] * b.part[i] + c.part[i];
  return r;
}

inline Lanes mul(const Lanes& a, const Lanes& b) {
  Lanes r;
  for (int i = 0; i < kParts; ++i) r.part[i] = a.part[i] * b.part[i];
  return r;
}

// 16 bytes → 16 floats. Compilers do not find the extending moves through
// vector extensions here, so the x86 builds name them.
#if defined(QMM_WIDE)
inline Lanes to_float(v16u8 bytes) {
  Lanes l;
  l.part[0] = (vf)_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32((__m128i)bytes));
  return l;
}
inline Lanes to_float(v16i8 bytes) {
  Lanes l;
  l.part[0] = (vf)_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32((__m128i)bytes));
  return l;
}
#elif defined(__AVX2__)
inline Lanes to_float(v16u8 bytes) {
  Lanes l;
  l.part[0] = (vf)_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32((__m128i)bytes));
  l.part[1] = (vf)_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128((__m128i)bytes, 8)));
  return l;
}
inline Lanes to_float(v16i8 bytes) {
  Lanes l;
  l.part[0] = (vf)_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32((__m128i)bytes));
  l.part[1] = (vf)_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128((__m128i)bytes, 8)));
  return l;
}
#else
template <typename Bytes>
inline Lanes to_float(Bytes bytes) {
  float f[16];
  for (int i = 0; i < 16; ++i) f[i] = float(bytes[i]);
  return load16(f);
}
#endif

// The largest tile of (input rows × weight rows) the registers hold.
#if defined(QMM_WIDE)
constexpr int kMaxRows = 4, kMaxCols = 4;
#else
constexpr int kMaxRows = 2, kMaxCols = 2;
#endif

// From this many rows on, a weight panel is decoded once into a buffer and
// reused by every row; below it, decoding inside the loop costs less.
constexpr size_t kPanelRows = 8;

// How far ahead, in 32-weight blocks, decoding asks for weights.
constexpr int kPrefetchBlocks = 16;

// Twice the E2M1 value of each 4-bit code (bit 3 is the sign): small
// integers, so a byte-table lookup (pshufb, tbl) decodes 16 codes at once.
const v16i8 kE2m1Doubled = {0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12};

// Half of the E8M0 scale 2^(e - 127), to undo the doubling: exact, as both
// factors are powers of two. Built from its bits (e ≤ 1 gives subnormals).
inline float e8m0_half(uint8_t e) {
  uint32_t bits = e >= 2 ? uint32_t(e - 1) << 23 : 0x00200000u << e;
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

  int group_shift;        // block index → group index

  RowReader(const Problem& p, uint32_t expert, int n) : p(p), group_shift(__builtin_ctz(p.group_size / 32)) {
    size_t row = size_t(expert) * p.out_dims + n;
    int bits = p.format == Format::Affine8 ? 8 : 4;
    bytes = reinterpret_cast<const uint8_t*>(p.w) + row * size_t(p.in_dims) * bits / 8;
    size_t groups = p.in_dims / p.group_size;
    e8m0 = p.e8m0 ? p.e8m0 + row * groups : nullptr;
    scales = p.scales ? p.scales + row * groups : nullptr;
    biases = p.biases ? p.biases + row * groups : nullptr;
  }

  // Asks for the codes of a later block: with several rows read in step,
  // the hardware prefetchers alone leave decode waiting on memory.
  inline void prefetch(int b) const {
    __builtin_prefetch(bytes + b * (p.format == Format::Affine8 ? 32 : 16));
  }

  inline void block(int b, Lanes& w0, Lanes& w1) const {
    const int group = b >> group_shift;
    if (p.format == Format::Affine8) {
      v16u8 lo, hi;
      std::memcpy(&lo, bytes + b * 32, 16);
      std::memcpy(&hi, bytes + b * 32 + 16, 16);
      Lanes s = splat(scales[group]), z = splat(biases[group]);
      w0 = mul_add(to_float(lo), s, z);
      w1 = mul_add(to_float(hi), s, z);
      return;
    }
    v16u8 packed;
    std::memcpy(&packed, bytes + b * 16, 16);
    v16u8 low = packed & 15, high = packed >> 4;
    if (p.format == Format::Mxfp4) {
      Lanes s = splat(e8m0_half(e8m0[group]));
      w0 = mul(to_float(__builtin_shuffle(kE2m1Doubled, (v16i8)low)), s);
      w1 = mul(to_float(__builtin_shuffle(kE2m1Doubled, (v16i8)high)), s);
    } else {
      Lanes s = splat(scales[group]), z = splat(biases[group]);
      w0 = mul_add(to_float(low), s, z);
      w1 = mul_add(to_float(high), s, z);
    }
  }
};

inline float sum_lanes(const Lanes& v) {
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
  Lanes acc[ROWS][COLS];
  for (int r = 0; r < ROWS; ++r)
    for (int c = 0; c < COLS; ++c) acc[r][c] = zero();
  for (int b = 0; b < blocks; ++b) {
    Lanes w0[COLS], w1[COLS];
    for (int c = 0; c < COLS; ++c) {
      if (panel) {
        w0[c] = load16(panel[c] + b * 32);
        w1[c] = load16(panel[c] + b * 32 + 16);
      } else {
        readers[c].prefetch(b + kPrefetchBlocks);
        readers[c].block(b, w0[c], w1[c]);
      }
    }
    for (int r = 0; r < ROWS; ++r) {
      Lanes x0 = load16(x[r] + b * 32), x1 = load16(x[r] + b * 32 + 16);
      for (int c = 0; c < COLS; ++c) {
        acc[r][c] = mul_add(x0, w0[c], acc[r][c]);
        acc[r][c] = mul_add(x1, w1[c], acc[r][c]);
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
          Lanes w0, w1;
          readers[c].block(b, w0, w1);
          store16(dst + b * 32, w0);
          store16(dst + b * 32 + 16, w1);
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
