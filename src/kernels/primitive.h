// The quantized matmul as an MLX primitive on the CPU stream, and the calls
// the Rust side makes to build it. Only glue: validation, shapes, and turning
// MLX arrays into the kernels' Problem.
#pragma once

#include <memory>

#include "safeguard-mlx/src/mlx/shim.h"

namespace safeguard_kernels {

using safeguard_mlx::Array;
using safeguard_mlx::ArrayPtr;

// x [..., K] (float32) times the quantized [N, K] matrix → [..., N]; `fast`
// quantizes x to int8 per block of 32 first.
ArrayPtr quantized_matmul(const Array& x, const Array& w, const Array& scales, std::unique_ptr<Array> biases,
                          int32_t group_size, int32_t bits, rust::Str mode, bool fast, rust::Str isa);

// x [X, M, K] (float32), expert matrices [E, N, K]: pair p multiplies input
// x[lhs[p]] by matrix rhs[p] → [P, M, N]. lhs, rhs: [P] uint32. With
// `skip_foreign`, rhs[p] == E names another rank's expert: rows of zeros.
ArrayPtr gather_matmul(const Array& x, const Array& w, const Array& scales, std::unique_ptr<Array> biases,
                       const Array& lhs, const Array& rhs, bool skip_foreign, int32_t group_size, int32_t bits,
                       rust::Str mode, bool fast, rust::Str isa);

// Why no kernel computes this quantization over `in_dims` inputs; empty when one does.
rust::String support_error(rust::Str mode, int32_t bits, int32_t group_size, int32_t in_dims);

rust::Vec<rust::String> available_isas_list();
rust::String default_isa_name();
size_t threads();

}  // namespace safeguard_kernels
