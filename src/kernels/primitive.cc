#include "safeguard-mlx/src/kernels/primitive.h"

#include <algorithm>
#include <stdexcept>
#include <string>

#include "mlx/backend/cpu/encoder.h"
#include "mlx/primitives.h"
#include "pool.h"
#include "qmm.h"

namespace mx = mlx::core;

namespace safeguard_kernels {

namespace {

Format format_of(std::string_view mode, int bits) {
  if (mode == "mxfp4" && bits == 4) return Format::Mxfp4;
  if (mode == "affine" && bits == 4) return Format::Affine4;
  if (mode == "affine" && bits == 8) return Format::Affine8;
  throw std::invalid_argument("no CPU kernel for " + std::string(mode) + " with " + std::to_string(bits) +
                              " bits (supported: mxfp4, affine 4 and 8 bits)");
}

class QuantizedMatmulCpu : public mx::UnaryPrimitive {
 public:
  QuantizedMatmulCpu(mx::Stream stream, Format format, Precision precision, int group_size, bool gathered,
                     bool skip_foreign, std::string isa)
      : mx::UnaryPrimitive(stream),
        format_(format),
        precision_(precision),
        group_size_(group_size),
        gathered_(gathered),
        skip_foreign_(skip_foreign),
        isa_(std::move(isa)) {}

  // inputs: x, w, scales, [biases], [lhs, rhs]; all row-contiguous.
  void eval_cpu(const std::vector<mx::array>& inputs, mx::array& out) override {
    out.set_data(mx::allocator::malloc(out.nbytes()));
    auto& encoder = mx::cpu::get_command_encoder(stream());
    std::vector<mx::array> held;
    for (const auto& in : inputs) {
      encoder.set_input_array(in);
      held.push_back(mx::array::unsafe_weak_copy(in));
    }
    encoder.set_output_array(out);
    encoder.dispatch([held = std::move(held), out = mx::array::unsafe_weak_copy(out), format = format_,
                      precision = precision_, group_size = group_size_, gathered = gathered_,
                      skip_foreign = skip_foreign_, isa = isa_]() mutable {
      const bool affine = format != Format::Mxfp4;
      const mx::array& x = held[0];
      const mx::array& w = held[1];
      Problem p{};
      p.format = format;
      p.precision = precision;
      p.group_size = group_size;
      p.in_dims = x.shape(-1);
      p.out_dims = out.shape(-1);
      p.x = x.data<float>();
      p.w = w.data<uint32_t>();
      if (affine) {
        p.scales = held[2].data<float>();
        p.biases = held[3].data<float>();
      } else {
        p.e8m0 = held[2].data<uint8_t>();
      }
      p.out = out.data<float>();
      std::vector<ExpertJob> jobs;
      if (!gathered) {
        const uint32_t rows = uint32_t(x.size() / p.in_dims);
        ExpertJob job{0, {}};
        job.rows.reserve(rows);
        for (uint32_t r = 0; r < rows; ++r) job.rows.push_back({r, r});
        jobs.push_back(std::move(job));
      } else {
        const mx::array& lhs = held[affine ? 4 : 3];
        const mx::array& rhs = held[affine ? 5 : 4];
        const uint32_t x_batches = uint32_t(x.shape(0)), per_pair = uint32_t(x.shape(1));
        const uint32_t experts = uint32_t(w.shape(0));
        std::vector<int> job_of(experts, -1);
        for (size_t pair = 0; pair < lhs.size(); ++pair) {
          const uint32_t l = lhs.data<uint32_t>()[pair], e = rhs.data<uint32_t>()[pair];
          const bool foreign = skip_foreign && e == experts;
          if (l >= x_batches || (e >= experts && !foreign))
            throw std::out_of_range("gathered quantized matmul: pair " + std::to_string(pair) + " names input " +
                                    std::to_string(l) + " of " + std::to_string(x_batches) + " and expert " +
                                    std::to_string(e) + " of " + std::to_string(experts));
          if (foreign) {
            // The output is fresh memory: the rows no job writes must be zeroed here.
            std::fill_n(p.out + size_t(pair) * per_pair * p.out_dims, size_t(per_pair) * p.out_dims, 0.0f);
            continue;
          }
          if (job_of[e] < 0) {
            job_of[e] = int(jobs.size());
            jobs.push_back(ExpertJob{e, {}});
          }
          auto& rows = jobs[job_of[e]].rows;
          for (uint32_t m = 0; m < per_pair; ++m)
            rows.push_back({l * per_pair + m, uint32_t(pair) * per_pair + m});
        }
      }
      run(p, jobs, isa);
    });
  }

  void eval_gpu(const std::vector<mx::array>&, mx::array&) override {
    throw std::runtime_error("safeguard's quantized matmul kernels run on the CPU only");
  }

  const char* name() const override { return "SafeguardQuantizedMatmul"; }

  bool is_equivalent(const mx::Primitive& other) const override {
    auto* o = dynamic_cast<const QuantizedMatmulCpu*>(&other);
    return o && o->format_ == format_ && o->precision_ == precision_ && o->group_size_ == group_size_ && o->gathered_ == gathered_ &&
           o->skip_foreign_ == skip_foreign_ && o->isa_ == isa_;
  }

 private:
  Format format_;
  Precision precision_;
  int group_size_;
  bool gathered_;
  // Expert parallel: a pair naming expert `experts` (one past the last held)
  // is another rank's; its rows are zeros and cost nothing.
  bool skip_foreign_;
  std::string isa_;
};

// The kernels read row-major buffers. Weights are evaluated at load and
// already are, so they go in as they are instead of adding a Contiguous node
// to every step's graph; lazy activations get one (a no-op when contiguous).
mx::array row_major(const mx::array& a) {
  return a.is_available() && a.flags().row_contiguous ? a : mx::contiguous(a);
}

Precision precision_of(bool fast) { return fast ? Precision::Fast : Precision::Exact; }

std::string checked_isa(rust::Str isa) {
  std::string name(isa);
  if (name.empty()) return default_isa();
  for (const auto& have : available_isas())
    if (have == name) return name;
  throw std::invalid_argument("kernel instruction set '" + name + "' is not available on this CPU");
}

// Validates the quantized matrix [.., N, K*bits/32] and returns the inputs the
// primitive takes after x: w, scales, [biases], all contiguous.
std::vector<mx::array> weight_inputs(Format format, int group_size, int bits, int in_dims, const Array& w,
                                     const Array& scales, const std::unique_ptr<Array>& biases) {
  if (std::string why = unsupported(format, group_size, in_dims); !why.empty())
    throw std::invalid_argument("no CPU kernel: " + why);
  if (w.dtype() != mx::uint32 || w.ndim() < 2 || w.shape(-1) * 32 / bits != in_dims)
    throw std::invalid_argument("quantized weight of shape " + std::to_string(w.ndim()) +
                                "-d does not pack " + std::to_string(in_dims) + " inputs at " +
                                std::to_string(bits) + " bits");
  auto groups_shape = w.shape();
  groups_shape.back() = in_dims / group_size;
  if (scales.shape() != groups_shape) throw std::invalid_argument("quantized scales do not match the weight");
  std::vector<mx::array> out{row_major(w)};
  if (format == Format::Mxfp4) {
    if (scales.dtype() != mx::uint8) throw std::invalid_argument("mxfp4 scales must be uint8 (E8M0)");
    if (biases) throw std::invalid_argument("mxfp4 weights have no biases");
    out.push_back(row_major(scales));
  } else {
    if (!biases || biases->shape() != groups_shape)
      throw std::invalid_argument("affine weights need biases shaped like their scales");
    out.push_back(row_major(mx::astype(scales, mx::float32)));
    out.push_back(row_major(mx::astype(*biases, mx::float32)));
  }
  return out;
}

void check_input(const Array& x) {
  if (x.dtype() != mx::float32)
    throw std::invalid_argument(std::string("the CPU kernels take float32 inputs, not ") +
                                (x.dtype() == mx::bfloat16 ? "bfloat16" : x.dtype() == mx::float16 ? "float16"
                                                                                                   : "this dtype"));
  if (mx::default_device() != mx::Device::cpu)
    throw std::invalid_argument("the CPU kernels need the CPU as MLX's default device");
}

}  // namespace

ArrayPtr quantized_matmul(const Array& x, const Array& w, const Array& scales, std::unique_ptr<Array> biases,
                          int32_t group_size, int32_t bits, rust::Str mode, bool fast, rust::Str isa) {
  const Format format = format_of(std::string_view(mode.data(), mode.size()), bits);
  check_input(x);
  if (w.ndim() != 2) throw std::invalid_argument("the quantized matrix must be 2-d [out, in]");
  const int in_dims = x.shape(-1);
  auto inputs = weight_inputs(format, group_size, bits, in_dims, w, scales, biases);
  inputs.insert(inputs.begin(), row_major(x));
  auto shape = x.shape();
  shape.back() = w.shape(0);
  auto stream = mx::default_stream(mx::Device::cpu);
  return std::make_unique<Array>(
      shape, mx::float32, std::make_shared<QuantizedMatmulCpu>(stream, format, precision_of(fast), group_size, false, false,
                                                        checked_isa(isa)),
      std::move(inputs));
}

ArrayPtr gather_matmul(const Array& x, const Array& w, const Array& scales, std::unique_ptr<Array> biases,
                       const Array& lhs, const Array& rhs, bool skip_foreign, int32_t group_size, int32_t bits,
                       rust::Str mode, bool fast, rust::Str isa) {
  const Format format = format_of(std::string_view(mode.data(), mode.size()), bits);
  check_input(x);
  if (x.ndim() != 3) throw std::invalid_argument("gathered inputs must be [batches, rows, in]");
  if (w.ndim() != 3) throw std::invalid_argument("the expert matrices must be 3-d [experts, out, in]");
  if (lhs.ndim() != 1 || rhs.shape() != lhs.shape())
    throw std::invalid_argument("gather indices must be two 1-d arrays of one length");
  const int in_dims = x.shape(-1);
  auto inputs = weight_inputs(format, group_size, bits, in_dims, w, scales, biases);
  inputs.insert(inputs.begin(), row_major(x));
  inputs.push_back(row_major(mx::astype(lhs, mx::uint32)));
  inputs.push_back(row_major(mx::astype(rhs, mx::uint32)));
  mx::Shape shape{lhs.shape(0), x.shape(1), w.shape(1)};
  auto stream = mx::default_stream(mx::Device::cpu);
  return std::make_unique<Array>(
      shape, mx::float32, std::make_shared<QuantizedMatmulCpu>(stream, format, precision_of(fast), group_size, true, skip_foreign,
                                                        checked_isa(isa)),
      std::move(inputs));
}

rust::String support_error(rust::Str mode, int32_t bits, int32_t group_size, int32_t in_dims) {
  try {
    return rust::String(unsupported(format_of(std::string_view(mode.data(), mode.size()), bits), group_size, in_dims));
  } catch (const std::invalid_argument& e) {
    return rust::String(e.what());
  }
}

rust::Vec<rust::String> available_isas_list() {
  rust::Vec<rust::String> out;
  for (const auto& isa : available_isas()) out.push_back(rust::String(isa));
  return out;
}

rust::String default_isa_name() { return rust::String(default_isa()); }

size_t threads() { return thread_count(); }

}  // namespace safeguard_kernels
