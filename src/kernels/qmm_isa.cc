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
#include <bit>
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

// Blocks per chunk of a decoded panel: 4 weight rows and 4 input rows of 32
// blocks are 32 KB, within L1 (48 KB on recent x86 cores).
constexpr int kChunkBlocks = 32;


// Twice the E2M1 value of each 4-bit code (bit 3 is the sign): small
// integers, so a byte-table lookup (pshufb, tbl) decodes 16 codes at once.
const v16i8 kE2m1Doubled = {0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12};
#if defined(QMM_WIDE)
// The same as floats, for a 16-lane permute (code 8 is +0, as above). A plain
// array: a vector constant would be built by AVX-512 code at start-up, on
// machines without it too.
alignas(64) constexpr float kE2m1DoubledFloat[16] = {0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12};
#endif

// Half of each E8M0 scale 2^(e - 127), to undo the doubling: exact, as both
// factors are powers of two. A table, as the subnormal cases (e ≤ 1) would
// otherwise put a branch in the inner loop.
constexpr std::array<float, 256> kE8m0Half = [] {
  std::array<float, 256> table{};
  for (int e = 0; e < 256; ++e) {
    const uint32_t bits = e >= 2 ? uint32_t(e - 1) << 23 : 0x00200000u << e;
    table[e] = std::bit_cast<float>(bits);
  }
  return table;
}();

inline float e8m0_half(uint8_t e) { return kE8m0Half[e]; }

// ---- Fast precision: int8 codes and integer dot products ----
//
// A block's 32 weights become 32 bytes in the order the prepared inputs use,
// and its dot product with 32 int8 input codes lands in 8 int32 lanes, lane j
// holding bytes 4j..4j+3. Integer sums are exact, so every instruction set
// gets the same lanes; the float part is the same fixed sequence after them.

typedef int32_t v8i __attribute__((vector_size(32)));
typedef float v8f __attribute__((vector_size(32)));

#if defined(__AVX2__)
typedef __m256i Bytes32;

inline Bytes32 load32(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }

// 16 packed bytes → [16 low nibbles | 16 high nibbles].
inline Bytes32 nibbles(const uint8_t* p) {
  const __m128i packed = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  const __m128i mask = _mm_set1_epi8(15);
  return _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(packed, 4), mask), _mm_and_si128(packed, mask));
}

inline Bytes32 e2m1_doubled(Bytes32 codes) {
  const __m256i table = _mm256_setr_epi8(0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12, 0, 1, 2, 3, 4,
                                         6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12);
  return _mm256_shuffle_epi8(table, codes);
}

inline Bytes32 minus_128(Bytes32 bytes) { return _mm256_xor_si256(bytes, _mm256_set1_epi8(char(0x80))); }

// Signed weights (|w| ≤ 128) times signed codes (|x| ≤ 127): |w| against x
// carrying w's sign, as the unsigned-by-signed instructions want.
inline v8i dot_signed(Bytes32 w, Bytes32 x) {
  const __m256i magnitude = _mm256_sign_epi8(w, w), signed_x = _mm256_sign_epi8(x, w);
#if defined(QMM_WIDE)
  return (v8i)_mm256_dpbusd_epi32(_mm256_setzero_si256(), magnitude, signed_x);
#else
  // Pairs stay within int16: 2 · 128 · 127 < 32768.
  return (v8i)_mm256_madd_epi16(_mm256_maddubs_epi16(magnitude, signed_x), _mm256_set1_epi16(1));
#endif
}

// Unsigned 4-bit weights times signed codes.
inline v8i dot_unsigned(Bytes32 w, Bytes32 x) {
#if defined(QMM_WIDE)
  return (v8i)_mm256_dpbusd_epi32(_mm256_setzero_si256(), w, x);
#else
  return (v8i)_mm256_madd_epi16(_mm256_maddubs_epi16(w, x), _mm256_set1_epi16(1));
#endif
}
#else
struct Bytes32 {
  uint8_t v[32];
};

inline Bytes32 load32(const void* p) {
  Bytes32 b;
  std::memcpy(b.v, p, 32);
  return b;
}

inline Bytes32 nibbles(const uint8_t* p) {
  Bytes32 b;
  for (int i = 0; i < 16; ++i) {
    b.v[i] = p[i] & 15;
    b.v[16 + i] = p[i] >> 4;
  }
  return b;
}

inline Bytes32 e2m1_doubled(Bytes32 codes) {
  static const int8_t table[16] = {0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12};
  for (auto& c : codes.v) c = uint8_t(table[c]);
  return codes;
}

inline Bytes32 minus_128(Bytes32 bytes) {
  for (auto& c : bytes.v) c ^= 0x80;
  return bytes;
}

inline v8i dot_signed(Bytes32 w, Bytes32 x) {
  v8i lanes{};
  for (int i = 0; i < 32; ++i) lanes[i / 4] += int32_t(int8_t(w.v[i])) * int32_t(int8_t(x.v[i]));
  return lanes;
}

inline v8i dot_unsigned(Bytes32 w, Bytes32 x) {
  v8i lanes{};
  for (int i = 0; i < 32; ++i) lanes[i / 4] += int32_t(w.v[i]) * int32_t(int8_t(x.v[i]));
  return lanes;
}
#endif

// One block of a weight row as bytes, with what turns their integer dot
// product with input codes c (factor d, sum Σc) into the real one:
// Σ w·x ≈ d · (factor · Σ bytes·c + offset · Σc).
struct Block8 {
  Bytes32 bytes;
  float factor;
  float offset;
};

inline float sum_lanes8(v8f v) {
  float l[8];
  std::memcpy(l, &v, sizeof l);
  return ((l[0] + l[4]) + (l[2] + l[6])) + ((l[1] + l[5]) + (l[3] + l[7]));
}

// The 32 weights of block `block` of one weight row, in the order the
// prepared input uses: for 4-bit formats the low nibbles (even inputs) then
// the high ones (odd inputs); for 8-bit the natural order.
struct RowReader {
  const Problem& p;
  const uint8_t* bytes;   // the row's packed codes
  size_t row_bytes;       // the codes of one row
  const uint8_t* e8m0;    // mxfp4 scales of the row
  const float* scales;    // affine scales of the row
  const float* biases;    // affine biases of the row

  int group_shift;        // block index → group index

  RowReader(const Problem& p, uint32_t expert, int n) : p(p), group_shift(__builtin_ctz(p.group_size / 32)) {
    size_t row = size_t(expert) * p.out_dims + n;
    int bits = p.format == Format::Affine8 ? 8 : 4;
    row_bytes = size_t(p.in_dims) * bits / 8;
    bytes = reinterpret_cast<const uint8_t*>(p.w) + row * row_bytes;
    size_t groups = p.in_dims / p.group_size;
    e8m0 = p.e8m0 ? p.e8m0 + row * groups : nullptr;
    scales = p.scales ? p.scales + row * groups : nullptr;
    biases = p.biases ? p.biases + row * groups : nullptr;
  }

  // Asks for the block at the same place in the row the next tile reads.
  // Rows lie one after the other, so the tiles stream through memory, yet
  // the hardware prefetchers alone left decode waiting on it for a third of
  // its time; a prefetch a few blocks ahead in the same row came too late
  // once decoding got fast (one M=1 thread: 11 → 16 GMAC/s at gpt-oss's
  // 2880 inputs). Past a slice's last tile it asks for rows another thread
  // reads, or for none: a prefetch never faults. `next_tile` is the same
  // for every reader, kept in one register (`next_tile_offset`).
  template <Format F>
  inline void prefetch(int b, size_t next_tile) const {
    __builtin_prefetch(bytes + next_tile + b * (F == Format::Affine8 ? 32 : 16));
  }

  size_t next_tile_offset() const { return kMaxCols * row_bytes; }

  // MXFP4 groups are always one block: its shift is known to be zero.
  template <Format F>
  inline int group_of(int b) const {
    return F == Format::Mxfp4 ? b : b >> group_shift;
  }

  template <Format F>
  inline Block8 block8(int b) const {
    const int group = group_of<F>(b);
    if constexpr (F == Format::Mxfp4) {
      return {e2m1_doubled(nibbles(bytes + b * 16)), e8m0_half(e8m0[group]), 0.0f};
    } else if constexpr (F == Format::Affine4) {
      return {nibbles(bytes + b * 16), scales[group], biases[group]};
    } else {
      // Codes q as signed q - 128: s·q + z = s·(q - 128) + (128·s + z).
      return {minus_128(load32(bytes + b * 32)), scales[group], 128.0f * scales[group] + biases[group]};
    }
  }

  // A block as floats, the low nibbles' 16 weights then the high ones'.
  // One instance per format: a format tested at run time inside the tiles'
  // loops left them a register-starved tangle of branches.
  template <Format F>
  inline void block(int b, Lanes& w0, Lanes& w1) const {
    const int group = group_of<F>(b);
    if constexpr (F == Format::Affine8) {
      v16u8 lo, hi;
      std::memcpy(&lo, bytes + b * 32, 16);
      std::memcpy(&hi, bytes + b * 32 + 16, 16);
      Lanes s = splat(scales[group]), z = splat(biases[group]);
      w0 = mul_add(to_float(lo), s, z);
      w1 = mul_add(to_float(hi), s, z);
    } else {
#if defined(QMM_WIDE)
      if constexpr (F == Format::Mxfp4) {
        // The 16 values scaled once, then looked up per lane straight from the
        // codes: the permute reads only an index's low 4 bits, so the high
        // nibble needs one shift and the low one nothing. Same products as the
        // byte-table path below (both exact), so the same bits.
        const __m512 table =
            _mm512_mul_ps(_mm512_load_ps(kE2m1DoubledFloat), _mm512_set1_ps(e8m0_half(e8m0[group])));
        const __m512i codes = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(bytes + b * 16)));
        w0.part[0] = (vf)_mm512_permutexvar_ps(codes, table);
        w1.part[0] = (vf)_mm512_permutexvar_ps(_mm512_srli_epi32(codes, 4), table);
        return;
      }
#endif
      v16u8 packed;
      std::memcpy(&packed, bytes + b * 16, 16);
      v16u8 low = packed & 15, high = packed >> 4;
      if constexpr (F == Format::Mxfp4) {
        Lanes s = splat(e8m0_half(e8m0[group]));
        w0 = mul(to_float(__builtin_shuffle(kE2m1Doubled, (v16i8)low)), s);
        w1 = mul(to_float(__builtin_shuffle(kE2m1Doubled, (v16i8)high)), s);
      } else {
        Lanes s = splat(scales[group]), z = splat(biases[group]);
        w0 = mul_add(to_float(low), s, z);
        w1 = mul_add(to_float(high), s, z);
      }
    }
  }

  inline void block(int b, Lanes& w0, Lanes& w1) const {
    switch (p.format) {
      case Format::Mxfp4:
        return block<Format::Mxfp4>(b, w0, w1);
      case Format::Affine4:
        return block<Format::Affine4>(b, w0, w1);
      case Format::Affine8:
        return block<Format::Affine8>(b, w0, w1);
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

// Adds to acc[rows × cols] the products of blocks [begin, end) for `rows`
// input rows against `cols` weight rows, the weights either decoded on the
// fly (`readers`) or read from a decoded panel. One instance per source: with
// both loops in one body the compiler keeps the accumulators on the stack, a
// load and a store around every FMA.
template <Format F, int ROWS, int COLS, bool PANEL>
void tile(int begin, int end, const float* const* x, const RowReader* readers, const float* const* panel,
          Lanes (*acc_io)[kMaxCols]) {
  Lanes acc[ROWS][COLS];
  for (int r = 0; r < ROWS; ++r)
    for (int c = 0; c < COLS; ++c) acc[r][c] = acc_io[r][c];
  const size_t next_tile = PANEL ? 0 : readers[0].next_tile_offset();
  for (int b = begin; b < end; ++b) {
    Lanes w0[COLS], w1[COLS];
    for (int c = 0; c < COLS; ++c) {
      if constexpr (PANEL) {
        w0[c] = load16(panel[c] + b * 32);
        w1[c] = load16(panel[c] + b * 32 + 16);
      } else {
        readers[c].template prefetch<F>(b, next_tile);
        readers[c].template block<F>(b, w0[c], w1[c]);
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
    for (int c = 0; c < COLS; ++c) acc_io[r][c] = acc[r][c];
}

using TileFn = void (*)(int, int, const float* const*, const RowReader*, const float* const*, Lanes (*)[kMaxCols]);

template <Format F, bool PANEL, int R, int... C>
constexpr auto tile_row(std::integer_sequence<int, C...>) {
  return std::array<TileFn, sizeof...(C)>{&tile<F, R, C + 1, PANEL>...};
}

template <Format F, bool PANEL, int... R>
constexpr auto tile_table(std::integer_sequence<int, R...>) {
  return std::array<std::array<TileFn, kMaxCols>, sizeof...(R)>{
      tile_row<F, PANEL, R + 1>(std::make_integer_sequence<int, kMaxCols>{})...};
}

// kDecodeTiles[format][rows - 1][cols - 1], in the order of `Format`, and
// kPanelTiles[rows - 1][cols - 1] (a decoded panel has no format left, so
// one instance serves all): the tile function for a partial tile too.
const std::array kDecodeTiles = {tile_table<Format::Mxfp4, false>(std::make_integer_sequence<int, kMaxRows>{}),
                                 tile_table<Format::Affine4, false>(std::make_integer_sequence<int, kMaxRows>{}),
                                 tile_table<Format::Affine8, false>(std::make_integer_sequence<int, kMaxRows>{})};
const auto kPanelTiles = tile_table<Format::Mxfp4, true>(std::make_integer_sequence<int, kMaxRows>{});

// The fast tile: int8 input codes, weights decoded to bytes per block. One
// instance per format: tested at run time inside the loop, the format's
// branches kept the accumulators in memory.
template <Format F, int ROWS, int COLS>
void tile_fast(int blocks, const Inputs& in, const size_t* x_rows, int k, const RowReader* readers,
               float* const* out) {
  constexpr bool unsigned_weights = F == Format::Affine4;
  constexpr bool offsets = F != Format::Mxfp4;
  v8f acc[ROWS][COLS];
  float offset_acc[ROWS][COLS];
  for (int r = 0; r < ROWS; ++r)
    for (int c = 0; c < COLS; ++c) {
      acc[r][c] = v8f{};
      offset_acc[r][c] = 0.0f;
    }
  const size_t next_tile = readers[0].next_tile_offset();
  for (int b = 0; b < blocks; ++b) {
    Block8 w[COLS];
    for (int c = 0; c < COLS; ++c) {
      readers[c].template prefetch<F>(b, next_tile);
      w[c] = readers[c].template block8<F>(b);
    }
    for (int r = 0; r < ROWS; ++r) {
      const size_t block = x_rows[r] * (k / 32) + b;
      const Bytes32 x = load32(in.q + x_rows[r] * k + b * 32);
      const float d = in.scale[block];
      for (int c = 0; c < COLS; ++c) {
        v8i lanes;
        if constexpr (unsigned_weights)
          lanes = dot_unsigned(w[c].bytes, x);
        else
          lanes = dot_signed(w[c].bytes, x);
        acc[r][c] = __builtin_convertvector(lanes, v8f) * (v8f{} + d * w[c].factor) + acc[r][c];
        if constexpr (offsets) offset_acc[r][c] = (d * w[c].offset) * float(in.sum[block]) + offset_acc[r][c];
      }
    }
  }
  for (int r = 0; r < ROWS; ++r)
    for (int c = 0; c < COLS; ++c) out[r][c] = sum_lanes8(acc[r][c]) + offset_acc[r][c];
}

using FastTileFn = void (*)(int, const Inputs&, const size_t*, int, const RowReader*, float* const*);

template <Format F, int R, int... C>
constexpr auto fast_tile_row(std::integer_sequence<int, C...>) {
  return std::array<FastTileFn, sizeof...(C)>{&tile_fast<F, R, C + 1>...};
}

template <Format F, int... R>
constexpr auto fast_tile_table(std::integer_sequence<int, R...>) {
  return std::array<std::array<FastTileFn, kMaxCols>, sizeof...(R)>{
      fast_tile_row<F, R + 1>(std::make_integer_sequence<int, kMaxCols>{})...};
}

// kFastTiles[format][rows - 1][cols - 1], in the order of `Format`.
const std::array kFastTiles = {fast_tile_table<Format::Mxfp4>(std::make_integer_sequence<int, kMaxRows>{}),
                               fast_tile_table<Format::Affine4>(std::make_integer_sequence<int, kMaxRows>{}),
                               fast_tile_table<Format::Affine8>(std::make_integer_sequence<int, kMaxRows>{})};

}  // namespace

namespace {

// The readers of up to kMaxCols weight rows from n0 on. Readers are plain
// views; building one costs a few pointer sums.
class Readers {
 public:
  Readers(const Problem& p, uint32_t expert, int n0, int cols) {
    for (int c = 0; c < cols; ++c) new (&storage_[c]) RowReader(p, expert, n0 + c);
  }
  operator const RowReader*() const { return reinterpret_cast<const RowReader*>(storage_); }
  const RowReader& operator[](int c) const { return reinterpret_cast<const RowReader*>(storage_)[c]; }

 private:
  alignas(RowReader) unsigned char storage_[kMaxCols][sizeof(RowReader)];
};

// Exact precision. With a decoded panel the blocks go in chunks, every row
// tile taking a chunk before the next: a chunk of the panel then stays in L1
// for all rows, where whole rows of panel and inputs (2 × 4 × 11.5 KB at
// gpt-oss's 2880 inputs) spill to L2 and leave the FMAs waiting. Each lane
// still adds its terms in block order, so the bits do not change.
void run_exact(const Problem& p, uint32_t expert, const RowJob* rows, size_t row_count, int n_begin, int n_end,
               const Inputs& in) {
  const int blocks = p.in_dims / 32;
  const bool use_panel = row_count >= kPanelRows;
  const int chunk = use_panel ? kChunkBlocks : blocks;
  const size_t row_tiles = (row_count + kMaxRows - 1) / kMaxRows;
  std::vector<float> panel_buffer(use_panel ? size_t(kMaxCols) * p.in_dims : 0);
  std::vector<Lanes> acc_buffer(row_tiles * kMaxRows * kMaxCols);
  auto acc_of = [&](size_t tile_index) {
    return reinterpret_cast<Lanes (*)[kMaxCols]>(acc_buffer.data() + tile_index * kMaxRows * kMaxCols);
  };
  for (int n0 = n_begin; n0 < n_end; n0 += kMaxCols) {
    const int cols = std::min(kMaxCols, n_end - n0);
    Readers readers(p, expert, n0, cols);
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
    std::fill(acc_buffer.begin(), acc_buffer.end(), zero());
    for (int begin = 0; begin < blocks; begin += chunk) {
      const int end = std::min(blocks, begin + chunk);
      for (size_t t = 0; t < row_tiles; ++t) {
        const size_t r0 = t * kMaxRows;
        const int count = int(std::min<size_t>(kMaxRows, row_count - r0));
        const float* x[kMaxRows];
        for (int r = 0; r < count; ++r) x[r] = in.x + size_t(rows[r0 + r].x_row) * p.in_dims;
        const TileFn tile_fn = use_panel ? kPanelTiles[count - 1][cols - 1]
                                         : kDecodeTiles[size_t(p.format)][count - 1][cols - 1];
        tile_fn(begin, end, x, readers, panel, acc_of(t));
      }
    }
    for (size_t t = 0; t < row_tiles; ++t) {
      const size_t r0 = t * kMaxRows;
      const int count = int(std::min<size_t>(kMaxRows, row_count - r0));
      for (int r = 0; r < count; ++r) {
        float* dst = p.out + size_t(rows[r0 + r].out_row) * p.out_dims + n0;
        for (int c = 0; c < cols; ++c) dst[c] = sum_lanes(acc_of(t)[r][c]);
      }
    }
  }
}

void run_fast(const Problem& p, uint32_t expert, const RowJob* rows, size_t row_count, int n_begin, int n_end,
              const Inputs& in) {
  const int blocks = p.in_dims / 32;
  for (int n0 = n_begin; n0 < n_end; n0 += kMaxCols) {
    const int cols = std::min(kMaxCols, n_end - n0);
    Readers readers(p, expert, n0, cols);
    for (size_t r0 = 0; r0 < row_count; r0 += kMaxRows) {
      const int count = int(std::min<size_t>(kMaxRows, row_count - r0));
      size_t x_rows[kMaxRows];
      float result[kMaxRows][kMaxCols];
      float* out[kMaxRows];
      for (int r = 0; r < count; ++r) {
        x_rows[r] = rows[r0 + r].x_row;
        out[r] = result[r];
      }
      kFastTiles[size_t(p.format)][count - 1][cols - 1](blocks, in, x_rows, p.in_dims, readers, out);
      for (int r = 0; r < count; ++r) {
        float* dst = p.out + size_t(rows[r0 + r].out_row) * p.out_dims + n0;
        for (int c = 0; c < cols; ++c) dst[c] = result[r][c];
      }
    }
  }
}

}  // namespace

void run_tile(const Problem& p, uint32_t expert, const RowJob* rows, size_t row_count, int n_begin, int n_end,
              const Inputs& in) {
  if (p.precision == Precision::Fast)
    run_fast(p, expert, rows, row_count, n_begin, n_end, in);
  else
    run_exact(p, expert, rows, row_count, n_begin, n_end, in);
}

}  // namespace safeguard_kernels::QMM_ISA
