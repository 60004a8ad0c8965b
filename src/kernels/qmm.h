// Quantized matmul on the CPU: out = x · Wᵀ for weights packed as MLX packs
// them (uint32 words along the input dimension, lowest bits first, one scale —
// and for affine one bias — per group), optionally gathered: each row pair
// picks its expert's matrix by index, as MLX's gather_qmm.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace safeguard_kernels {

enum class Format { Mxfp4, Affine4, Affine8 };

// One output row: the input row it reads and the expert matrix it multiplies.
struct RowJob {
  uint32_t x_row;
  uint32_t out_row;
};

// Output rows that share an expert, so its weights are read once for all.
struct ExpertJob {
  uint32_t expert;
  std::vector<RowJob> rows;
};

// How activations enter the products: as float32 (equal to MLX's kernels to
// rounding), or quantized to int8 per block of 32 with integer dot products
// (as llama.cpp does; faster, within the int8 rounding bound).
enum class Precision { Exact, Fast };

// The input rows as the kernels read them, prepared once per call.
struct Inputs {
  const float* x = nullptr;      // exact: [x_rows, K] floats
  const int8_t* q = nullptr;     // fast: [x_rows, K] int8 codes
  const float* scale = nullptr;  // fast: [x_rows, K / 32] code → value factors
  const int32_t* sum = nullptr;  // fast: [x_rows, K / 32] sums of the codes
};

struct Problem {
  Format format;
  Precision precision;
  int group_size;       // 32 for mxfp4; 32, 64 or 128 for affine
  int in_dims;          // K
  int out_dims;         // N
  const float* x;       // [x_rows, K], row-major, float32
  const uint32_t* w;    // [experts, N, K * bits / 32]
  const uint8_t* e8m0;  // mxfp4 scales [experts, N, K / 32]
  const float* scales;  // affine scales [experts, N, K / group]
  const float* biases;  // affine biases [experts, N, K / group]
  float* out;           // [out_rows, N]
};

// Why `problem` cannot run here, or empty when it can.
std::string unsupported(Format format, int group_size, int in_dims);

// The instruction set each entry point uses: "avx512" (with VNNI), "avx2"
// (with FMA), "generic".
// `generic` is portable C++ (NEON on arm64 by the compiler) and the reference
// the others equal bit for bit.
std::vector<std::string> available_isas();
std::string default_isa();

// Runs the jobs on the thread pool with the given instruction set.
void run(const Problem& problem, const std::vector<ExpertJob>& jobs, const std::string& isa);

// Per-ISA entry points (qmm_isa.cc, compiled once per instruction set).
namespace generic {
void run_tile(const Problem& p, uint32_t expert, const RowJob* rows, size_t row_count, int n_begin, int n_end,
              const Inputs& in);
}
namespace avx2 {
void run_tile(const Problem& p, uint32_t expert, const RowJob* rows, size_t row_count, int n_begin, int n_end,
              const Inputs& in);
}
namespace avx512 {
void run_tile(const Problem& p, uint32_t expert, const RowJob* rows, size_t row_count, int n_begin, int n_end,
              const Inputs& in);
}

}  // namespace safeguard_kernels
