// GEMM and its backward on the opencl backend: the lowering of GemmArgs to a Problem over
// OpenCL buffers, the host launcher of gemm_opencl.cl (pack both operands into f32 panels,
// then the register-tiled kernel), the configuration per device, and the records.
//
// Every dtype runs the same f32 tile kernel: packing converts f16 (vload_half, no
// cl_khr_fp16 needed) and bf16 (ushort) to f32, the epilogue rounds once to the output
// dtype. Transposes, leading dimensions, base offsets and broadcast batches are strides of
// the packing step; the tile kernel only ever sees contiguous, zero-padded panels.
//
// Backward: grad_a = alpha * grad_c @ b^T and grad_b = alpha * a^T @ grad_c are the same
// launcher on transposed views; the gradient of an operand broadcast over the batch folds
// the batch into the reduction (one GEMM with k' = batch * k); grad_bias is a column sum.
#include "kernels/gemm/gemm_opencl.h"

#include <algorithm>
#include <cstdlib>
#include <map>
#include <mutex>

#include "dispatch/kernel_record.h"
#include "kernels/gemm/gemm_desc.h"

namespace anvil::opencl_gemm {
namespace {

constexpr const char* kSource = "gemm_opencl";
constexpr int kPriority = 50;          // on opencl buffers: the only backend there
constexpr int kHostPriority = -10;     // on host memory: below the reference (0), and forced only
// Fixed work-group size of the packing and column-sum kernels: a driver-chosen size varies
// with the global size, and PoCL compiles a kernel once per work-group size (~0.5 s each).
constexpr size_t kPackLocal = 16;

int dtype_code(DType dtype) { return dtype == DType::f16 ? 1 : dtype == DType::bf16 ? 2 : 0; }

// A logical (rows, cols) matrix per batch entry over a bound buffer.
struct Side {
  opencl::Operand op;
  int64_t batch_stride = 0, row_stride = 0, col_stride = 0;
};

Side transposed(Side s) {
  std::swap(s.row_stride, s.col_stride);
  return s;
}

// c (b, m, n) = alpha * a (b, m, k) @ b (b, k, n) + beta * c + bias (n); sum_batches:
// c (m, n) = alpha * sum_b a_b @ b_b (the batch folded into the reduction).
struct Problem {
  DType dtype = DType::f32;
  int64_t batch = 1, m = 0, n = 0, k = 0;
  Side a, b, c;
  opencl::Operand bias;
  int64_t bias_stride = 1;
  bool has_bias = false, sum_batches = false;
  float alpha = 1.0f, beta = 0.0f;
};

Side side_of(const TensorRef& t, const opencl::Operand& op) {
  return {op, gemm_desc::batch_stride(t), t.stride(-2), t.stride(-1)};
}

// ------------------------------------------------------------------ the launcher
Status run_problem(opencl::Operands& ops, const Problem& p, const Config& cfg) {
  if (p.m == 0 || p.n == 0 || (p.batch == 0 && !p.sum_batches)) return Status::Ok();
  const int device = ops.device();
  const std::string options = build_options(cfg, p.dtype);
  opencl::Kernel tiles;
  ANVIL_RETURN_IF_ERROR(tiles.create(device, kSource, options, "gemm_tiles"));

  const int64_t red = p.sum_batches ? p.batch * p.k : p.k;  // reduction length
  const int64_t unit = cfg.local ? cfg.kwg : cfg.kwi;
  const int64_t kp = red == 0 ? 0 : int64_t(opencl::round_up(red, unit));
  const int64_t panels_m = int64_t(opencl::round_up((p.m + cfg.mwi - 1) / cfg.mwi, cfg.mdimc));
  const int64_t panels_n = int64_t(opencl::round_up((p.n + cfg.nwi - 1) / cfg.nwi, cfg.ndimc));
  const int64_t grid_batch = p.sum_batches ? 1 : p.batch;
  const int64_t nb_a = p.sum_batches || p.a.batch_stride == 0 ? 1 : p.batch;
  const int64_t nb_b = p.sum_batches || p.b.batch_stride == 0 ? 1 : p.batch;
  const int64_t panel_a = panels_m * kp * cfg.mwi, panel_b = panels_n * kp * cfg.nwi;  // floats per batch

  opencl::Workspace workspace(device);
  cl_mem ap = nullptr, bp = nullptr;
  if (kp > 0) {
    int64_t bytes_a = 0, bytes_b = 0;
    if (__builtin_mul_overflow(nb_a * panel_a, int64_t(4), &bytes_a) ||
        __builtin_mul_overflow(nb_b * panel_b, int64_t(4), &bytes_b))
      return {StatusCode::out_of_memory, "opencl gemm: packed operands overflow int64"};
    ANVIL_RETURN_IF_ERROR(workspace.allocate(bytes_a, &ap));
    ANVIL_RETURN_IF_ERROR(workspace.allocate(bytes_b, &bp));
    opencl::Kernel pack;
    ANVIL_RETURN_IF_ERROR(pack.create(device, kSource, options, "pack_panels"));
    // A: rows m, reduction along a's columns. B: rows n (b's columns), reduction along b's rows.
    struct Pack {
      const Side& s;
      int64_t rows, row_stride, red_stride, panels;
      cl_mem dst;
      int64_t nb;
      int width;
    };
    for (const Pack& q : {Pack{p.a, p.m, p.a.row_stride, p.a.col_stride, panels_m, ap, nb_a, cfg.mwi},
                          Pack{p.b, p.n, p.b.col_stride, p.b.row_stride, panels_n, bp, nb_b, cfg.nwi}}) {
      const cl_long fold = p.sum_batches ? q.s.batch_stride : 0, batch_stride = p.sum_batches ? 0 : q.s.batch_stride;
      ANVIL_RETURN_IF_ERROR(pack.args(q.s.op.mem, cl_long(q.s.op.offset), cl_long(q.rows), cl_long(red), cl_long(p.k),
                                      cl_long(q.row_stride), cl_long(q.red_stride), fold, batch_stride, q.dst,
                                      cl_long(q.panels), cl_long(kp), cl_int(q.width)));
      const size_t global[3] = {opencl::round_up(kp, kPackLocal), size_t(q.panels), size_t(q.nb)};
      const size_t local[3] = {kPackLocal, 1, 1};
      ANVIL_RETURN_IF_ERROR(pack.launch(ops.queue(), 3, global, local));
    }
  }
  const cl_long a_batch = nb_a > 1 ? panel_a : 0, b_batch = nb_b > 1 ? panel_b : 0;
  const cl_long c_batch = p.sum_batches ? 0 : p.c.batch_stride;
  ANVIL_RETURN_IF_ERROR(tiles.args(ap, bp, cl_long(kp), a_batch, b_batch, p.c.op.mem, cl_long(p.c.op.offset),
                                   cl_long(p.m), cl_long(p.n), cl_long(p.c.row_stride), cl_long(p.c.col_stride),
                                   c_batch, p.bias.mem, cl_long(p.bias.offset), cl_long(p.bias_stride),
                                   cl_int(p.has_bias), p.alpha, p.beta));
  const size_t global[3] = {size_t(panels_m), size_t(panels_n), size_t(grid_batch)};
  const size_t local[3] = {size_t(cfg.mdimc), size_t(cfg.ndimc), 1};
  return tiles.launch(ops.queue(), 3, global, local);
}

// ------------------------------------------------------------------ configuration
struct ConfigCache {
  std::mutex mutex;
  std::map<int, std::pair<Config, std::string>> by_device;
};
ConfigCache& config_cache() {
  static ConfigCache* c = new ConfigCache;
  return *c;
}

// ANVIL_OPENCL_GEMM_PARAMS="MWI=8 NWI=32 ..." (a partial set over the device's config), for
// experiments; an invalid value is an error of every call, never ignored.
Status env_config(int device, Config* cfg) {
  const char* env = std::getenv("ANVIL_OPENCL_GEMM_PARAMS");
  if (!env || !*env) return Status::Ok();
  opencl::Params p;
  ANVIL_RETURN_IF_ERROR(opencl::parse_params(env, &p).with_context("ANVIL_OPENCL_GEMM_PARAMS: "));
  opencl::Params merged = cfg->params();
  for (const auto& [k, v] : p) {
    if (!merged.count(k))
      return invalid_argument("ANVIL_OPENCL_GEMM_PARAMS: unknown parameter " + k + "; valid: " +
                              opencl::format_params(merged));
    merged[k] = v;
  }
  ANVIL_RETURN_IF_ERROR(Config::from_params(merged, cfg).with_context("ANVIL_OPENCL_GEMM_PARAMS: "));
  const opencl::DeviceInfo* info = nullptr;
  ANVIL_RETURN_IF_ERROR(opencl::device_info(device, &info));
  return valid_for(*cfg, *info).with_context("ANVIL_OPENCL_GEMM_PARAMS: ");
}

Status config_of_call(int device, Config* cfg) {
  *cfg = config_for(device);
  return env_config(device, cfg);
}

// ------------------------------------------------------------------ records
int priority_of(const TensorRef& lead) { return lead.device.type == DeviceType::host ? kHostPriority : kPriority; }

Status gemm_can_implement(const GemmArgs& args) {
  ANVIL_RETURN_IF_ERROR(args.bias ? opencl::operands_usable({&args.a, &args.b, &args.c, &*args.bias})
                                  : opencl::operands_usable({&args.a, &args.b, &args.c}));
  Config cfg;
  return config_of_call(opencl::device_of(args.a), &cfg);
}

Status gemm_run(const GemmArgs& args) {
  Config cfg;
  ANVIL_RETURN_IF_ERROR(config_of_call(opencl::device_of(args.a), &cfg));
  return run_with_config(args, cfg);
}

int gemm_priority(const GemmArgs& args) { return priority_of(args.a); }

Status gemm_backward_can_implement(const GemmBackwardArgs& args) {
  std::vector<const TensorRef*> operands = {&args.a, &args.b, &args.grad_c};
  for (const auto* g : {&args.grad_a, &args.grad_b, &args.grad_bias})
    if (*g) operands.push_back(&**g);
  for (const TensorRef* t : operands) ANVIL_RETURN_IF_ERROR(opencl::operands_usable({&args.a, t}));
  Config cfg;
  return config_of_call(opencl::device_of(args.a), &cfg);
}

Status gemm_backward_run(const GemmBackwardArgs& args) {
  const int device = opencl::device_of(args.a);
  Config cfg;
  ANVIL_RETURN_IF_ERROR(config_of_call(device, &cfg));
  const gemm_desc::Shape s = gemm_desc::shape_of(args);
  opencl::Operands ops(device);
  ANVIL_RETURN_IF_ERROR(ops.status());
  opencl::Operand a_op, b_op, g_op;
  ANVIL_RETURN_IF_ERROR(ops.bind(args.a, opencl::Access::read, &a_op, "a"));
  ANVIL_RETURN_IF_ERROR(ops.bind(args.b, opencl::Access::read, &b_op, "b"));
  ANVIL_RETURN_IF_ERROR(ops.bind(args.grad_c, opencl::Access::read, &g_op, "grad_c"));
  const Side a = side_of(args.a, a_op), b = side_of(args.b, b_op), grad_c = side_of(args.grad_c, g_op);
  Problem base;
  base.dtype = args.a.dtype;
  base.batch = s.batch;
  base.alpha = float(args.alpha);
  if (args.grad_a) {
    opencl::Operand out;
    ANVIL_RETURN_IF_ERROR(ops.bind(*args.grad_a, opencl::Access::write, &out, "grad_a"));
    Problem p = base;
    p.m = s.m, p.n = s.k, p.k = s.n;
    p.a = grad_c, p.b = transposed(b), p.c = side_of(*args.grad_a, out);
    p.sum_batches = s.batch > 1 && a.batch_stride == 0;
    ANVIL_RETURN_IF_ERROR(run_problem(ops, p, cfg));
  }
  if (args.grad_b) {
    opencl::Operand out;
    ANVIL_RETURN_IF_ERROR(ops.bind(*args.grad_b, opencl::Access::write, &out, "grad_b"));
    Problem p = base;
    p.m = s.k, p.n = s.n, p.k = s.m;
    p.a = transposed(a), p.b = grad_c, p.c = side_of(*args.grad_b, out);
    p.sum_batches = s.batch > 1 && b.batch_stride == 0;
    ANVIL_RETURN_IF_ERROR(run_problem(ops, p, cfg));
  }
  if (args.grad_bias && s.n > 0) {
    opencl::Operand out;
    ANVIL_RETURN_IF_ERROR(ops.bind(*args.grad_bias, opencl::Access::write, &out, "grad_bias"));
    opencl::Kernel sums;
    ANVIL_RETURN_IF_ERROR(sums.create(device, kSource, build_options(cfg, base.dtype), "column_sums"));
    ANVIL_RETURN_IF_ERROR(sums.args(g_op.mem, cl_long(g_op.offset), cl_long(s.batch), cl_long(s.m), cl_long(s.n),
                                    cl_long(grad_c.batch_stride), cl_long(grad_c.row_stride),
                                    cl_long(grad_c.col_stride), out.mem, cl_long(out.offset),
                                    cl_long(args.grad_bias->stride(0))));
    const size_t global[1] = {opencl::round_up(s.n, kPackLocal)}, local[1] = {kPackLocal};
    ANVIL_RETURN_IF_ERROR(sums.launch(ops.queue(), 1, global, local));
  }
  return ops.finish();
}

int gemm_backward_priority(const GemmBackwardArgs& args) { return priority_of(args.a); }

}  // namespace

// ------------------------------------------------------------------ Config
opencl::Params Config::params() const {
  return {{"MWI", mwi}, {"NWI", nwi}, {"VW", vw}, {"KWI", kwi}, {"MDIMC", mdimc}, {"NDIMC", ndimc},
          {"KWG", kwg}, {"LOCAL", local}};
}

Status Config::from_params(const opencl::Params& p, Config* out) {
  Config c;
  const std::pair<const char*, int*> fields[] = {{"MWI", &c.mwi},     {"NWI", &c.nwi},     {"VW", &c.vw},
                                                 {"KWI", &c.kwi},     {"MDIMC", &c.mdimc}, {"NDIMC", &c.ndimc},
                                                 {"KWG", &c.kwg},     {"LOCAL", &c.local}};
  for (const auto& [name, field] : fields) {
    auto it = p.find(name);
    if (it == p.end()) return invalid_argument(std::string("gemm parameters lack ") + name);
    if (it->second < 0 || it->second > 4096)
      return invalid_argument(std::string("gemm parameter ") + name + "=" + std::to_string(it->second) +
                              " is out of range");
    *field = int(it->second);
  }
  for (const auto& [k, v] : p) {
    bool known = false;
    for (const auto& [name, field] : fields) known = known || k == name;
    if (!known) return invalid_argument("unknown gemm parameter " + k);
  }
  *out = c;
  return Status::Ok();
}

Status valid_for(const Config& c, const opencl::DeviceInfo& info) {
  const std::string cfg = " (" + c.str() + ")";
  if (c.mwi < 1 || c.nwi < 1 || c.kwi < 1 || c.mdimc < 1 || c.ndimc < 1 || c.kwg < 1)
    return invalid_argument("gemm parameters must be positive" + cfg);
  if (c.vw != 1 && c.vw != 2 && c.vw != 4 && c.vw != 8 && c.vw != 16)
    return invalid_argument("VW must be 1, 2, 4, 8 or 16" + cfg);
  if (c.nwi % c.vw != 0) return invalid_argument("NWI must be a multiple of VW" + cfg);
  if (c.kwg % c.kwi != 0) return invalid_argument("KWG must be a multiple of KWI" + cfg);
  if (c.local != 0 && c.local != 1) return invalid_argument("LOCAL must be 0 or 1" + cfg);
  if (c.mwi * c.nwi > 512) return invalid_argument("register tile MWI*NWI above 512 floats" + cfg);
  if (int64_t(c.mdimc) * c.ndimc > info.max_work_group_size)
    return unsupported("work-group of " + std::to_string(c.mdimc * c.ndimc) + " items exceeds the device's " +
                       std::to_string(info.max_work_group_size) + cfg);
  if (c.mdimc > info.max_work_item_sizes[0] || c.ndimc > info.max_work_item_sizes[1])
    return unsupported("work-group dimensions exceed CL_DEVICE_MAX_WORK_ITEM_SIZES" + cfg);
  const int64_t local_bytes = c.local ? int64_t(c.kwg) * (c.mdimc * c.mwi + c.ndimc * c.nwi) * 4 : 0;
  if (local_bytes > info.local_mem_bytes)
    return unsupported("needs " + std::to_string(local_bytes) + " bytes of local memory, the device has " +
                       std::to_string(info.local_mem_bytes) + cfg);
  return Status::Ok();
}

Config config_for(int device, std::string* origin) {
  ConfigCache& cache = config_cache();
  std::lock_guard lock(cache.mutex);
  auto it = cache.by_device.find(device);
  if (it == cache.by_device.end()) {
    Config cfg;
    std::string from = "built-in";
    const opencl::DeviceInfo* info = nullptr;
    const opencl::ParamsLookup found = opencl::lookup_params(device, "gemm");
    Config parsed;
    if (!found.params.empty() && Config::from_params(found.params, &parsed).ok() &&
        opencl::device_info(device, &info).ok() && valid_for(parsed, *info).ok()) {
      cfg = parsed;
      from = found.origin;
    }
    it = cache.by_device.emplace(device, std::make_pair(cfg, from)).first;
  }
  if (origin) *origin = it->second.second;
  return it->second.first;
}

std::vector<Config> search_space(const opencl::DeviceInfo& info) {
  std::vector<Config> out;
  auto add = [&](const Config& c) {
    if (valid_for(c, info).ok() && std::find(out.begin(), out.end(), c) == out.end()) out.push_back(c);
  };
  if (info.is_cpu()) {
    // Micro-kernels (1x1 work-groups) first: the likely winners on CPU devices.
    for (int vw : {16, 8})
      for (int nwi : {32, 16, 48, 64})
        for (int mwi : {12, 8, 6, 14, 10, 4, 16})
          for (int kwi : {4, 2, 1}) {
            if (mwi * (nwi / vw) > 28 || nwi % vw) continue;  // accumulators beyond the vector registers
            add({mwi, nwi, vw, kwi, 1, 1, 16, 0});
          }
    for (int wg : {2, 4})
      for (int local : {0, 1}) add({8, 32, 16, 2, wg, wg, 16, local});
  } else {
    for (int local : {1, 0})
      for (int wg : {16, 8})
        for (int mwi : {4, 8, 2})
          for (int nwi : {4, 8})
            for (int vw : {4, 2, 1})
              for (int kwg : {16, 32, 8}) add({mwi, nwi, vw, 2, wg, wg, kwg, local});
  }
  return out;
}

std::string build_options(const Config& cfg, DType dtype) {
  opencl::Defines d;
  for (const auto& [k, v] : cfg.params()) d.add(k, v);
  d.add("DTYPE", dtype_code(dtype));
  return d.str();
}

Status run_with_config(const GemmArgs& args, const Config& cfg) {
  const int device = opencl::device_of(args.a);
  const gemm_desc::Shape s = gemm_desc::shape_of(args);
  opencl::Operands ops(device);
  ANVIL_RETURN_IF_ERROR(ops.status());
  Problem p;
  p.dtype = args.a.dtype;
  p.batch = s.batch, p.m = s.m, p.n = s.n, p.k = s.k;
  opencl::Operand a, b, c;
  ANVIL_RETURN_IF_ERROR(ops.bind(args.a, opencl::Access::read, &a, "a"));
  ANVIL_RETURN_IF_ERROR(ops.bind(args.b, opencl::Access::read, &b, "b"));
  ANVIL_RETURN_IF_ERROR(
      ops.bind(args.c, args.beta != 0 ? opencl::Access::read_write : opencl::Access::write, &c, "c"));
  p.a = side_of(args.a, a), p.b = side_of(args.b, b), p.c = side_of(args.c, c);
  if (args.bias) {
    ANVIL_RETURN_IF_ERROR(ops.bind(*args.bias, opencl::Access::read, &p.bias, "bias"));
    p.has_bias = true;
    p.bias_stride = args.bias->stride(0);
  }
  p.alpha = float(args.alpha), p.beta = float(args.beta);
  ANVIL_RETURN_IF_ERROR(run_problem(ops, p, cfg));
  return ops.finish();
}

void add_gemm_kernels(dispatch::KernelTables& tables) {
  using dispatch::kernel_name;
  for (DType dtype : {DType::f32, DType::f16, DType::bf16}) {
    dispatch::KernelRecord<GemmArgs> forward{kernel_name(Op::gemm, dtype, "opencl", "tiled"), "opencl", dtype,
                                             kPriority, gemm_can_implement, gemm_run};
    forward.priority_for = gemm_priority;
    tables.add(forward);
    dispatch::KernelRecord<GemmBackwardArgs> backward{kernel_name(Op::gemm_backward, dtype, "opencl", "tiled"),
                                                      "opencl", dtype, kPriority, gemm_backward_can_implement,
                                                      gemm_backward_run};
    backward.priority_for = gemm_backward_priority;
    tables.add(backward);
  }
}

}  // namespace anvil::opencl_gemm
