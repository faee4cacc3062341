#include "tests/cpp/test_support.h"

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <sstream>
#include <stdexcept>

#include "bench/shape_file.h"
#include "kernels/common/reference_naive.h"

namespace anvil::test {

// ------------------------------------------------------------------ Buffer
namespace {
constexpr unsigned char kGuardByte = 0xA5;
}

Buffer::Buffer(DType dtype, int64_t elements)
    : dtype_(dtype), elements_(elements),
      bytes_(size_t(elements * dtype_size(dtype) + 2 * kGuardBytes), kGuardByte) {
  fill(NAN);
}

double Buffer::get(int64_t i) const {
  const void* p = static_cast<const char*>(data()) + i * dtype_size(dtype_);
  switch (dtype_) {
    case DType::f32: return *static_cast<const float*>(p);
    case DType::f64: return *static_cast<const double*>(p);
    case DType::f16: return to_float(*static_cast<const float16*>(p));
    case DType::bf16: return to_float(*static_cast<const bfloat16*>(p));
    case DType::boolean: return *static_cast<const uint8_t*>(p);
  }
  return 0;
}

void Buffer::set(int64_t i, double v) {
  void* p = static_cast<char*>(data()) + i * dtype_size(dtype_);
  switch (dtype_) {
    case DType::f32: *static_cast<float*>(p) = float(v); break;
    case DType::f64: *static_cast<double*>(p) = v; break;
    case DType::f16: *static_cast<float16*>(p) = to_float16(float(v)); break;
    case DType::bf16: *static_cast<bfloat16*>(p) = to_bfloat16(float(v)); break;
    case DType::boolean: *static_cast<uint8_t*>(p) = v != 0 && !std::isnan(v); break;
  }
}

void Buffer::fill(double v) {
  for (int64_t i = 0; i < elements_; ++i) set(i, v);
}

bool Buffer::guards_intact() const {
  const size_t tail = size_t(kGuardBytes + elements_ * dtype_size(dtype_));
  for (size_t i = 0; i < size_t(kGuardBytes); ++i)
    if (bytes_[i] != kGuardByte || bytes_[tail + i] != kGuardByte) return false;
  return true;
}

// ------------------------------------------------------------------ device copies
DeviceCopy::DeviceCopy(Device device, void* host, int64_t bytes) : device_(device), host_(host), bytes_(bytes) {
  if (device.type == DeviceType::host) {
    device_data_ = host;
    return;
  }
  status_ = device_malloc(device, bytes, &device_data_);
  if (status_.ok()) status_ = copy_to_device(device, device_data_, host, bytes);
}

DeviceCopy::~DeviceCopy() {
  if (device_.type != DeviceType::host) (void)device_free(device_, device_data_);
}

Status DeviceCopy::download() {
  if (device_.type == DeviceType::host) return Status::Ok();
  ANVIL_RETURN_IF_ERROR(synchronize(device_));
  return copy_to_host(device_, host_, device_data_, bytes_);
}

namespace {
const BackendInfo* backend_of_kernel(const std::string& kernel_name) {
  static const std::vector<BackendInfo> infos = backends();
  for (const KernelInfo& k : kernels())
    if (k.name == kernel_name)
      for (const BackendInfo& b : infos)
        if (b.name == k.backend) return &b;
  return nullptr;
}
}  // namespace

Device device_of_kernel(const std::string& kernel_name) {
  const BackendInfo* b = backend_of_kernel(kernel_name);
  for (DeviceType t : b ? b->device_types : std::vector<DeviceType>{})
    if (t != DeviceType::host) return {t, 0};
  return {};
}

Status kernel_available(const std::string& kernel_name) {
  const BackendInfo* b = backend_of_kernel(kernel_name);
  if (!b) return {StatusCode::not_found, "no kernel named " + kernel_name};
  if (!b->available) return {StatusCode::unsupported, b->name + ": " + b->detail};
  for (const KernelInfo& k : kernels())
    if (k.name == kernel_name && !k.runs_here) return {StatusCode::unsupported, k.not_here};
  return Status::Ok();
}

// ------------------------------------------------------------------ shape files
std::vector<ShapeRow> load_shapes(const std::string& name, const std::string& tag) {
  // ANVIL_SHAPES_DIR in the environment: a test binary run away from its source tree.
  const char* dir = std::getenv("ANVIL_SHAPES_DIR");
  const std::string path = std::string(dir && *dir ? dir : ANVIL_SHAPES_DIR) + "/" + name + ".csv";
  if (!std::ifstream(path)) throw std::runtime_error("cannot open shape file " + path);
  return shapes::load(path, tag.empty() ? std::vector<std::string>{} : std::vector<std::string>{tag});
}

int64_t as_int(const ShapeRow& row, const std::string& column) {
  auto it = row.find(column);
  if (it == row.end()) throw std::runtime_error("shape row lacks column " + column);
  return std::stoll(it->second);
}

// ------------------------------------------------------------------ specs
int64_t TensorSpec::span() const {
  int64_t last = offset;
  for (size_t i = 0; i < shape.size(); ++i) {
    if (shape[i] == 0) return offset + 1;
    last += (shape[i] - 1) * strides[i];
  }
  return last + 1;
}

TensorSpec packed(std::string name, std::vector<int64_t> shape, TensorSpec::Role role) {
  return padded(std::move(name), std::move(shape), 0, 0, role);
}

TensorSpec padded(std::string name, std::vector<int64_t> shape, int64_t pad, int64_t offset, TensorSpec::Role role) {
  TensorSpec s;
  s.name = std::move(name);
  s.shape = std::move(shape);
  s.strides.assign(s.shape.size(), 1);
  int64_t stride = 1;
  for (int i = int(s.shape.size()) - 1; i >= 0; --i) {
    s.strides[size_t(i)] = stride;
    stride *= std::max<int64_t>(s.shape[size_t(i)], 1) + (i == int(s.shape.size()) - 1 ? pad : 0);
  }
  s.offset = offset;
  s.role = role;
  return s;
}

namespace {

void for_each_offset(const TensorSpec& s, const std::function<void(int64_t)>& fn) {
  for (int64_t d : s.shape)
    if (d == 0) return;
  std::vector<int64_t> index(s.shape.size(), 0);
  while (true) {
    int64_t off = s.offset;
    for (size_t i = 0; i < index.size(); ++i) off += index[i] * s.strides[i];
    fn(off);
    int i = int(index.size()) - 1;
    for (; i >= 0; --i) {
      if (++index[size_t(i)] < s.shape[size_t(i)]) break;
      index[size_t(i)] = 0;
    }
    if (i < 0) return;
  }
}

TensorRef make_ref(Buffer& b, const TensorSpec& s) {
  TensorRef t;
  t.data = b.data();
  t.dtype = b.dtype();
  t.rank = int(s.shape.size());
  for (size_t i = 0; i < s.shape.size(); ++i) {
    t.shape[i] = s.shape[i];
    t.strides[i] = s.strides[i];
  }
  t.offset = s.offset;
  return t;
}

// One full set of buffers for a case in one dtype, filled from the shared values.
struct Instance {
  std::vector<Buffer> buffers;
  std::vector<TensorRef> refs;
};

Instance instantiate(DType dtype, const std::vector<TensorSpec>& specs, const std::vector<std::vector<double>>& values) {
  Instance inst;
  for (size_t i = 0; i < specs.size(); ++i) {
    const TensorSpec& s = specs[i];
    const DType d = s.dtype_override != DType::f64 ? s.dtype_override : dtype;
    inst.buffers.emplace_back(d, s.span());
    Buffer& b = inst.buffers.back();  // all NaN so far
    if (s.role != TensorSpec::output)
      for_each_offset(s, [&](int64_t off) { b.set(off, values[i][size_t(off)]); });
  }
  for (size_t i = 0; i < specs.size(); ++i) inst.refs.push_back(make_ref(inst.buffers[i], specs[i]));
  return inst;
}

}  // namespace

std::string repro(const std::string& kernel, DType dtype, const std::vector<TensorSpec>& specs, uint64_t seed,
                  const std::string& extra) {
  std::ostringstream out;
  out << "repro: kernel=" << kernel << " dtype=" << dtype_name(dtype) << " seed=" << seed;
  for (const TensorSpec& s : specs) {
    out << " " << s.name << "=[";
    for (size_t i = 0; i < s.shape.size(); ++i) out << (i ? "," : "") << s.shape[i];
    out << "]{";
    for (size_t i = 0; i < s.strides.size(); ++i) out << (i ? "," : "") << s.strides[i];
    out << "}";
    if (s.offset) out << "+" << s.offset;
  }
  if (!extra.empty()) out << " " << extra;
  return out.str();
}

template <class Args>
HarnessResult run_case(const std::string& kernel_name, DType dtype, const std::vector<TensorSpec>& specs, Values values,
                       uint64_t seed, const std::function<Args(const std::vector<TensorRef>&)>& build,
                       const std::function<void(std::vector<std::vector<double>>&)>& prepare) {
  HarnessResult result;
  const std::string rep = repro(kernel_name, dtype, specs, seed);
  // Values, rounded to the case dtype so that every implementation sees the same inputs.
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> normal(0.0, 1.0);
  std::uniform_int_distribution<int> small(-3, 3);
  std::vector<std::vector<double>> vals;
  for (const TensorSpec& s : specs) {
    std::vector<double> v(size_t(s.span()), NAN);
    Buffer rounding(s.dtype_override != DType::f64 ? s.dtype_override : dtype, 1);
    for_each_offset(s, [&](int64_t off) {
      const double x = s.generator ? s.generator(rng) : values == Values::small_ints ? double(small(rng)) : normal(rng);
      rounding.set(0, x);
      v[size_t(off)] = rounding.get(0);
    });
    vals.push_back(std::move(v));
  }
  if (prepare) {  // derived inputs (e.g. the forward output a backward reads), then rounded
    prepare(vals);
    for (size_t i = 0; i < specs.size(); ++i) {
      Buffer rounding(specs[i].dtype_override != DType::f64 ? specs[i].dtype_override : dtype, 1);
      for (double& x : vals[i]) {
        rounding.set(0, x);
        if (!std::isnan(x)) x = rounding.get(0);
      }
    }
  }

  const std::string op_prefix = kernel_name.substr(0, kernel_name.find('.'));
  Instance oracle = instantiate(DType::f64, specs, vals);
  {
    ScopedOverrides force({"", op_prefix + ".f64.reference"});
    Status st = force.status().ok() ? [&] {
      if constexpr (std::is_same_v<Args, GemmArgs>) return gemm(build(oracle.refs));
      else if constexpr (std::is_same_v<Args, GemmBackwardArgs>) return gemm_backward(build(oracle.refs));
      else if constexpr (std::is_same_v<Args, Conv2dArgs>) return conv2d(build(oracle.refs));
      else if constexpr (std::is_same_v<Args, Conv2dBackwardArgs>) return conv2d_backward(build(oracle.refs));
      else if constexpr (std::is_same_v<Args, AttentionArgs>) return attention(build(oracle.refs));
      else return attention_backward(build(oracle.refs));
    }() : force.status();
    if (!st.ok()) {
      result.failure = "oracle failed: " + st.message() + "\n" + rep;
      return result;
    }
  }
  // A kernel of a device backend runs on device copies of every buffer (guards
  // included), which are then copied back for the checks below.
  const Device device = device_of_kernel(kernel_name);
  auto run_kernel = [&](Instance& inst) -> Status {
    ScopedOverrides force({"", kernel_name});
    if (!force.status().ok()) return force.status();
    std::vector<std::unique_ptr<DeviceCopy>> copies;
    std::vector<TensorRef> refs = inst.refs;
    for (size_t i = 0; i < refs.size(); ++i) {
      copies.push_back(std::make_unique<DeviceCopy>(device, inst.buffers[i].raw(), inst.buffers[i].raw_bytes()));
      ANVIL_RETURN_IF_ERROR(copies.back()->status());
      if (device.type == DeviceType::opencl) {  // data is a cl_mem: the guard goes into the element offset
        refs[i].data = copies.back()->data();
        refs[i].offset += Buffer::kGuardBytes / dtype_size(refs[i].dtype);
      } else {
        refs[i].data = static_cast<char*>(copies.back()->data()) + Buffer::kGuardBytes;
      }
      refs[i].device = device;
    }
    const Args args = build(refs);
    Status st;
    if constexpr (std::is_same_v<Args, GemmArgs>) st = gemm(args);
    else if constexpr (std::is_same_v<Args, GemmBackwardArgs>) st = gemm_backward(args);
    else if constexpr (std::is_same_v<Args, Conv2dArgs>) st = conv2d(args);
    else if constexpr (std::is_same_v<Args, Conv2dBackwardArgs>) st = conv2d_backward(args);
    else if constexpr (std::is_same_v<Args, AttentionArgs>) st = attention(args);
    else st = attention_backward(args);
    for (auto& copy : copies) {
      const Status back = copy->download();
      if (st.ok() && !back.ok()) st = back;
    }
    return st;
  };
  Instance first = instantiate(dtype, specs, vals), second = instantiate(dtype, specs, vals);
  for (Instance* inst : {&first, &second}) {
    const Status st = run_kernel(*inst);
    if (st.code() == StatusCode::unsupported && st.message().find("refuses this call") != std::string::npos) {
      result.skipped = true;  // outside the kernel's declared domain: another kernel takes it
      return result;
    }
    if (!st.ok()) {
      result.failure = "kernel failed: " + st.message() + "\n" + rep;
      return result;
    }
  }
  Instance naive = instantiate(dtype, specs, vals);
  {
    const Status st = reference::naive_f32(build(naive.refs));
    if (!st.ok()) {
      result.failure = "naive failed: " + st.message() + "\n" + rep;
      return result;
    }
  }

  int64_t zeros = 0, count = 0;
  for (size_t i = 0; i < specs.size(); ++i) {
    const TensorSpec& s = specs[i];
    for (Instance* inst : {&first, &second, &naive})
      if (!inst->buffers[i].guards_intact()) {
        result.guards_ok = false;
        if (result.failure.empty()) result.failure = s.name + ": guard region overwritten\n" + rep;
      }
    // Elements outside the view must be untouched (still NaN / the input value).
    std::vector<bool> in_view(size_t(s.span()), false);
    for_each_offset(s, [&](int64_t off) { in_view[size_t(off)] = true; });
    const bool poisonable = first.buffers[i].dtype() != DType::boolean;  // NaN cannot be stored in bool
    for (int64_t off = 0; poisonable && off < s.span(); ++off)
      if (!in_view[size_t(off)] && !std::isnan(first.buffers[i].get(off)) && result.failure.empty())
        result.failure = s.name + ": element " + std::to_string(off) + " outside the view was written\n" + rep;
    if (s.role == TensorSpec::input) continue;
    for_each_offset(s, [&](int64_t off) {
      const double want = oracle.buffers[i].get(off);
      const double got = first.buffers[i].get(off), again = second.buffers[i].get(off);
      Buffer rounded(first.buffers[i].dtype(), 1);
      rounded.set(0, want);
      const double want_rounded = rounded.get(0);
      const bool both_nan = std::isnan(got) && std::isnan(want);
      if (!both_nan && std::memcmp(&got, &want_rounded, sizeof got) != 0) result.bit_exact = false;
      if (!(both_nan || std::memcmp(&got, &again, sizeof got) == 0)) result.deterministic = false;
      if (std::isnan(got) != std::isnan(want) && result.failure.empty())
        result.failure = s.name + ": NaN mismatch at element " + std::to_string(off) + " (got " +
                         std::to_string(got) + ", oracle " + std::to_string(want) + ")\n" + rep;
      if (!both_nan) {
        const double err = std::isinf(want) && got == want ? 0.0 : std::abs(got - want);
        result.kernel_error = std::max(result.kernel_error, std::isnan(err) ? INFINITY : err);
        const double naive_got = naive.buffers[i].get(off);
        const double nerr = std::isinf(want) && naive_got == want ? 0.0 : std::abs(naive_got - want);
        result.naive_error = std::max(result.naive_error, std::isnan(nerr) ? INFINITY : nerr);
      }
      zeros += got == 0.0;
      ++count;
    });
  }
  result.untrusted = count > 8 && zeros * 10 > count * 3;
  return result;
}

template HarnessResult run_case<GemmArgs>(const std::string&, DType, const std::vector<TensorSpec>&, Values, uint64_t,
                                          const std::function<GemmArgs(const std::vector<TensorRef>&)>&,
    const std::function<void(std::vector<std::vector<double>>&)>&);
template HarnessResult run_case<GemmBackwardArgs>(const std::string&, DType, const std::vector<TensorSpec>&, Values,
                                                  uint64_t,
                                                  const std::function<GemmBackwardArgs(const std::vector<TensorRef>&)>&,
    const std::function<void(std::vector<std::vector<double>>&)>&);
template HarnessResult run_case<Conv2dArgs>(const std::string&, DType, const std::vector<TensorSpec>&, Values, uint64_t,
                                            const std::function<Conv2dArgs(const std::vector<TensorRef>&)>&,
    const std::function<void(std::vector<std::vector<double>>&)>&);
template HarnessResult run_case<Conv2dBackwardArgs>(
    const std::string&, DType, const std::vector<TensorSpec>&, Values, uint64_t,
    const std::function<Conv2dBackwardArgs(const std::vector<TensorRef>&)>&,
    const std::function<void(std::vector<std::vector<double>>&)>&);
template HarnessResult run_case<AttentionArgs>(const std::string&, DType, const std::vector<TensorSpec>&, Values,
                                               uint64_t,
                                               const std::function<AttentionArgs(const std::vector<TensorRef>&)>&,
    const std::function<void(std::vector<std::vector<double>>&)>&);
template HarnessResult run_case<AttentionBackwardArgs>(
    const std::string&, DType, const std::vector<TensorSpec>&, Values, uint64_t,
    const std::function<AttentionBackwardArgs(const std::vector<TensorRef>&)>&,
    const std::function<void(std::vector<std::vector<double>>&)>&);

std::vector<std::string> kernel_names(Op op, bool with_f64) {
  std::vector<std::string> names;
  for (const KernelInfo& k : kernels())
    if (k.op == op && (with_f64 || k.dtype != DType::f64)) names.push_back(k.name);
  return names;
}

DType dtype_of_kernel(const std::string& name) {
  const auto first = name.find('.');
  const std::string d = name.substr(first + 1, name.find('.', first + 1) - first - 1);
  if (d == "f16") return DType::f16;
  if (d == "bf16") return DType::bf16;
  if (d == "f64") return DType::f64;
  return DType::f32;
}

}  // namespace anvil::test
