#include "qmm.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>

#include "pool.h"

namespace safeguard_kernels {

namespace {

bool is_4bit(Format f) { return f != Format::Affine8; }

// The input rows in the order the kernels read weights: within every 32
// inputs of a 4-bit format, the even positions (low nibbles) then the odd ones
// (high nibbles). A dot product does not depend on the order of its terms'
// pairing, so permuting both sides alike leaves it unchanged, and weights need
// no interleaving in the inner loop.
std::vector<float> prepare_inputs(const Problem& p, size_t x_rows) {
  const size_t k = p.in_dims;
  std::vector<float> prepared(x_rows * k);
  for (size_t r = 0; r < x_rows; ++r) {
    const float* src = p.x + r * k;
    float* dst = prepared.data() + r * k;
    for (size_t b = 0; b < k; b += 32)
      for (size_t i = 0; i < 16; ++i) {
        dst[b + i] = src[b + 2 * i];
        dst[b + 16 + i] = src[b + 2 * i + 1];
      }
  }
  return prepared;
}

// Each block of 32 inputs as int8 codes with one factor: code = round(x / d),
// d = max|x| / 127. The same as llama.cpp's Q8_0 activations.
void quantize_inputs(const float* x, size_t rows, size_t k, std::vector<int8_t>& q, std::vector<float>& scale,
                     std::vector<int32_t>& sum) {
  const size_t blocks = k / 32;
  q.resize(rows * k);
  scale.resize(rows * blocks);
  sum.resize(rows * blocks);
  for (size_t b = 0; b < rows * blocks; ++b) {
    const float* src = x + b * 32;
    float amax = 0.0f;
    for (int i = 0; i < 32; ++i) amax = std::max(amax, std::fabs(src[i]));
    const float d = amax / 127.0f, inverse = d > 0.0f ? 1.0f / d : 0.0f;
    int32_t total = 0;
    for (int i = 0; i < 32; ++i) {
      const int32_t code = std::clamp(int32_t(std::nearbyint(src[i] * inverse)), -127, 127);
      q[b * 32 + i] = int8_t(code);
      total += code;
    }
    scale[b] = d;
    sum[b] = total;
  }
}

using TileFn = void (*)(const Problem&, uint32_t, const RowJob*, size_t, int, int, const Inputs&);

TileFn tile_for(const std::string& isa) {
#if defined(__x86_64__)
  if (isa == "avx512") return avx512::run_tile;
  if (isa == "avx2") return avx2::run_tile;
#endif
  if (isa == "generic") return generic::run_tile;
  throw std::invalid_argument("unknown kernel instruction set '" + isa + "'");
}

}  // namespace

std::string unsupported(Format format, int group_size, int in_dims) {
  if (format == Format::Mxfp4 && group_size != 32) return "mxfp4 needs group size 32";
  if (group_size != 32 && group_size != 64 && group_size != 128)
    return "group size " + std::to_string(group_size) + " (supported: 32, 64, 128)";
  if (in_dims % group_size != 0)
    return std::to_string(in_dims) + " inputs are not a whole number of groups of " + std::to_string(group_size);
  return "";
}

std::vector<std::string> available_isas() {
  std::vector<std::string> isas;
#if defined(__x86_64__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni"))
    isas.push_back("avx512");
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) isas.push_back("avx2");
#endif
  isas.push_back("generic");
  return isas;
}

std::string default_isa() {
  static const std::string isa = available_isas().front();
  return isa;
}

void run(const Problem& p, const std::vector<ExpertJob>& jobs, const std::string& isa) {
  TileFn tile = tile_for(isa);
  size_t x_rows = 0;
  for (const auto& job : jobs)
    for (const auto& row : job.rows) x_rows = std::max<size_t>(x_rows, row.x_row + 1);
  std::vector<float> prepared;
  Inputs in;
  in.x = p.x;
  if (is_4bit(p.format)) {
    prepared = prepare_inputs(p, x_rows);
    in.x = prepared.data();
  }
  std::vector<int8_t> codes;
  std::vector<float> scales;
  std::vector<int32_t> sums;
  if (p.precision == Precision::Fast) {
    quantize_inputs(in.x, x_rows, p.in_dims, codes, scales, sums);
    in = Inputs{nullptr, codes.data(), scales.data(), sums.data()};
  }
  // Tasks are (job, slice of weight rows). Enough slices to keep every thread
  // busy, each a multiple of 4 rows; wider when many input rows share them, so
  // a decoded panel serves more work.
  const size_t threads = thread_count();
  const size_t want_tasks = threads * 8;
  size_t per_job = std::max<size_t>(1, (want_tasks + jobs.size() - 1) / std::max<size_t>(1, jobs.size()));
  size_t slice = (size_t(p.out_dims) + per_job - 1) / per_job;
  slice = std::max<size_t>(4, (slice + 3) / 4 * 4);
  const size_t slices = (size_t(p.out_dims) + slice - 1) / slice;
  parallel_for(jobs.size() * slices, [&](size_t task) {
    const ExpertJob& job = jobs[task / slices];
    const int n_begin = int((task % slices) * slice);
    const int n_end = std::min<int>(p.out_dims, n_begin + int(slice));
    tile(p, job.expert, job.rows.data(), job.rows.size(), n_begin, n_end, in);
  });
}

}  // namespace safeguard_kernels
