// conv2d and its backward on the opencl backend: the host launchers of conv2d_opencl.cl
// (implicit GEMM for the forward and the input gradient, packed GEMM for the weight
// gradient, a column sum for the bias gradient), their configuration and the records.
//
// Configuration: the register tile MWI x NWI (float VW vectors) per device class (below),
// which a tuned "conv2d" entry (opencl_tuning.h) or ANVIL_OPENCL_CONV2D_PARAMS="MWI=6 ..."
// (for experiments; an invalid value fails every call) overrides. A call whose group has
// at most NWI / 2 output channels runs the narrow variant (1.5 MWI) x (NWI / 2), which
// wastes fewer zero columns. Work-groups are 1 x 1 x 1.
//
// Layouts: any strides (NCHW, NHWC, views) for every operand, read as given; groups and
// depthwise are the group grid dimension. Every dtype accumulates in f32.
#include <algorithm>
#include <cstdlib>
#include <initializer_list>
#include <map>
#include <mutex>
#include <vector>

#include "backends/opencl/opencl_runtime.h"
#include "backends/opencl/opencl_tuning.h"
#include "dispatch/kernel_record.h"
#include "kernels/conv2d/conv2d_desc.h"

namespace anvil::opencl_conv2d {
namespace {

constexpr const char* kSource = "conv2d_opencl";
constexpr int kPriority = 50;       // on opencl buffers: the only backend there
constexpr int kHostPriority = -10;  // on host memory: below the reference (0), and forced only
constexpr size_t kPackLocal = 16;   // fixed work-group of the packing kernels (PoCL compiles per size)

int dtype_code(DType dtype) { return dtype == DType::f16 ? 1 : dtype == DType::bf16 ? 2 : 0; }

// ------------------------------------------------------------------ configuration
struct Config {
  int mwi = 4, nwi = 64, vw = 16;
  opencl::Params params() const { return {{"MWI", mwi}, {"NWI", nwi}, {"VW", vw}}; }
  // For groups of at most NWI / 2 output channels.
  Config narrow() const {
    if (nwi / 2 < vw || (nwi / 2) % vw != 0) return *this;
    return {std::max(1, mwi * 3 / 2), nwi / 2, vw};
  }
};

// Defaults per device class. CPU devices (AVX-512, float16): 4 pixels x 64 channels = 16
// zmm accumulators per work-item; measured on PoCL 3.1 (2-core AVX-512 Xeon VM) against
// 12x32, 10x32, 8x32, 6x32, 8x48, 6x48 and 5x64 on the ResNet-50 layers: 4x64 was fastest
// or within noise on every one (the A side is MWI scalar broadcasts per reduction step,
// each from its own pixel's address: fewer pixels, fewer address registers). Narrower
// vectors (AVX2): 4 x 16 in float8. Other devices: a small tile (not measured here).
Config default_config(const opencl::DeviceInfo& info) {
  if (info.is_cpu()) return info.preferred_vector_width_float >= 16 ? Config{4, 64, 16} : Config{4, 16, 8};
  return Config{4, 4, 4};
}

Status apply_params(const opencl::Params& p, Config* cfg, const char* what) {
  for (const auto& [k, v] : p) {
    int* field = k == "MWI" ? &cfg->mwi : k == "NWI" ? &cfg->nwi : k == "VW" ? &cfg->vw : nullptr;
    if (!field)
      return invalid_argument(std::string(what) + ": unknown parameter " + k + "; valid: MWI NWI VW");
    if (v < 1 || v > 64) return invalid_argument(std::string(what) + ": " + k + "=" + std::to_string(v) + " is out of range");
    *field = int(v);
  }
  if (cfg->vw != 1 && cfg->vw != 2 && cfg->vw != 4 && cfg->vw != 8 && cfg->vw != 16)
    return invalid_argument(std::string(what) + ": VW must be 1, 2, 4, 8 or 16");
  if (cfg->nwi % cfg->vw != 0) return invalid_argument(std::string(what) + ": NWI must be a multiple of VW");
  if (cfg->mwi * cfg->nwi > 512) return invalid_argument(std::string(what) + ": register tile MWI*NWI above 512 floats");
  return Status::Ok();
}

// The device's configuration (default, then its tuned entry), looked up once per device:
// the tuning database is a file.
Status device_config(int device, Config* cfg) {
  static std::mutex mutex;
  static std::map<int, Config>* by_device = new std::map<int, Config>;
  std::lock_guard lock(mutex);
  auto it = by_device->find(device);
  if (it == by_device->end()) {
    const opencl::DeviceInfo* info = nullptr;
    ANVIL_RETURN_IF_ERROR(opencl::device_info(device, &info));
    Config c = default_config(*info);
    const opencl::ParamsLookup tuned = opencl::lookup_params(device, "conv2d");
    Config t = c;
    if (!tuned.params.empty() && apply_params(tuned.params, &t, "conv2d tuning").ok()) c = t;
    it = by_device->emplace(device, c).first;
  }
  *cfg = it->second;
  return Status::Ok();
}

Status config_of_call(int device, Config* cfg) {
  ANVIL_RETURN_IF_ERROR(device_config(device, cfg));
  const char* env = std::getenv("ANVIL_OPENCL_CONV2D_PARAMS");
  if (!env || !*env) return Status::Ok();
  opencl::Params p;
  ANVIL_RETURN_IF_ERROR(opencl::parse_params(env, &p).with_context("ANVIL_OPENCL_CONV2D_PARAMS: "));
  return apply_params(p, cfg, "ANVIL_OPENCL_CONV2D_PARAMS");
}

std::string build_options(const Config& cfg, DType dtype) {
  opencl::Defines d;
  for (const auto& [k, v] : cfg.params()) d.add(k, v);
  d.add("DTYPE", dtype_code(dtype));
  return d.str();
}

// ------------------------------------------------------------------ launchers
struct Image {  // a bound logical (n, c, h, w) operand
  opencl::Operand op;
  int64_t sn = 0, sc = 0, sh = 0, sw = 0;
};
Image image_of(const TensorRef& t, const opencl::Operand& op) {
  return {op, t.strides[0], t.strides[1], t.strides[2], t.strides[3]};
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

Status workspace_bytes(int64_t a, int64_t b, int64_t c, int64_t d, int64_t* out) {
  int64_t x = 0;
  if (__builtin_mul_overflow(a, b, &x) || __builtin_mul_overflow(x, c, &x) || __builtin_mul_overflow(x, d, &x) ||
      __builtin_mul_overflow(x, int64_t(4), &x))
    return {StatusCode::out_of_memory, "opencl conv2d: workspace size overflows int64"};
  *out = x;
  return Status::Ok();
}

// The implicit GEMM (forward or grad input): dst (N, groups * dst_c, dst_h, dst_w) from src
// (N, groups * red_c, src_h, src_w) and the weight seen through `roles` (pack_weights).
struct Implicit {
  Image src, dst;
  int64_t n = 0, src_h = 0, src_w = 0, dst_h = 0, dst_w = 0, red_c = 0, dst_c = 0, groups = 1;
  int64_t taps_r = 1, taps_s = 1;
  Conv2dParams geo;
  bool transposed = false;
  // weight roles
  opencl::Operand w;
  int64_t w_out = 0, w_red = 0, w_r = 0, w_s = 0, out_group_step = 0, red_group_step = 0;
  opencl::Operand bias;
  int64_t bias_stride = 0;
  bool has_bias = false;
};

Status run_implicit(opencl::Operands& ops, const Config& base, DType dtype, const Implicit& c) {
  const int64_t pixels = c.n * c.dst_h * c.dst_w;
  if (pixels == 0 || c.dst_c == 0 || c.groups == 0) return Status::Ok();
  const Config cfg = 2 * c.dst_c <= base.nwi ? base.narrow() : base;
  const int device = ops.device();
  const std::string options = build_options(cfg, dtype);
  const int64_t red = c.taps_r * c.taps_s * c.red_c;
  const int64_t panels_n = ceil_div(c.dst_c, cfg.nwi);
  opencl::Workspace workspace(device);
  cl_mem wp = nullptr;
  if (red > 0) {
    int64_t bytes = 0;
    ANVIL_RETURN_IF_ERROR(workspace_bytes(c.groups, panels_n, red, cfg.nwi, &bytes));
    ANVIL_RETURN_IF_ERROR(workspace.allocate(bytes, &wp));
    opencl::Kernel pack;
    ANVIL_RETURN_IF_ERROR(pack.create(device, kSource, options, "pack_weights"));
    ANVIL_RETURN_IF_ERROR(pack.args(c.w.mem, cl_long(c.w.offset), cl_long(c.w_out), cl_long(c.w_red), cl_long(c.w_r),
                                    cl_long(c.w_s), cl_long(c.out_group_step), cl_long(c.red_group_step),
                                    cl_long(c.dst_c), cl_long(c.red_c), cl_long(c.taps_s), cl_long(red), wp,
                                    cl_long(panels_n)));
    const size_t global[3] = {opencl::round_up(red, kPackLocal), size_t(panels_n), size_t(c.groups)};
    const size_t local[3] = {kPackLocal, 1, 1};
    ANVIL_RETURN_IF_ERROR(pack.launch(ops.queue(), 3, global, local));
  }
  opencl::Kernel conv;
  ANVIL_RETURN_IF_ERROR(conv.create(device, kSource, options, "conv_implicit"));
  const Conv2dParams& g = c.geo;
  // A filter row's taps read one contiguous run (channels-last, one group, no dilation
  // along w): see conv_implicit.
  const bool merge_s = !c.transposed && g.dilation_w == 1 && c.src.sw == c.red_c * c.src.sc && c.taps_s > 1;
  ANVIL_RETURN_IF_ERROR(conv.args(
      c.src.op.mem, cl_long(c.src.op.offset), cl_long(c.src.sn), cl_long(c.src.sc), cl_long(c.src.sh),
      cl_long(c.src.sw), cl_long(c.src_h), cl_long(c.src_w), cl_long(c.red_c), cl_long(c.taps_r), cl_long(c.taps_s),
      cl_long(g.stride_h), cl_long(g.stride_w), cl_long(g.pad_h), cl_long(g.pad_w), cl_long(g.dilation_h),
      cl_long(g.dilation_w), cl_int(c.transposed), cl_int(merge_s), wp, cl_long(panels_n), c.dst.op.mem,
      cl_long(c.dst.op.offset),
      cl_long(c.dst.sn), cl_long(c.dst.sc), cl_long(c.dst.sh), cl_long(c.dst.sw), cl_long(c.dst_h), cl_long(c.dst_w),
      cl_long(pixels), cl_long(c.dst_c), c.bias.mem, cl_long(c.bias.offset), cl_long(c.bias_stride),
      cl_int(c.has_bias)));
  const size_t global[3] = {size_t(ceil_div(pixels, cfg.mwi)), size_t(panels_n), size_t(c.groups)};
  const size_t local[3] = {1, 1, 1};
  return conv.launch(ops.queue(), 3, global, local);
}

// grad weight (K, C/G, R, S) = dO^T (per group) @ im2col(input), reduction over (n, p, q).
Status run_grad_weight(opencl::Operands& ops, const Config& cfg, DType dtype, const conv2d_desc::Shape& s,
                       const Conv2dParams& geo, const Image& g_out, const Image& in, const Image& dw) {
  const int64_t groups = s.groups, kg = s.k_per_group(), cg = s.c_per_group();
  const int64_t cols = s.r * s.s * cg;
  if (kg == 0 || cols == 0) return Status::Ok();
  const int device = ops.device();
  const std::string options = build_options(cfg, dtype);
  const int64_t pixels = s.n * s.p * s.q;
  const int64_t panels_m = ceil_div(kg, cfg.mwi), panels_n = ceil_div(cols, cfg.nwi);
  opencl::Workspace workspace(device);
  cl_mem ap = nullptr, bp = nullptr;
  if (pixels > 0) {
    int64_t bytes_a = 0, bytes_b = 0;
    ANVIL_RETURN_IF_ERROR(workspace_bytes(groups, panels_m, pixels, cfg.mwi, &bytes_a));
    ANVIL_RETURN_IF_ERROR(workspace_bytes(groups, panels_n, pixels, cfg.nwi, &bytes_b));
    ANVIL_RETURN_IF_ERROR(workspace.allocate(bytes_a, &ap));
    ANVIL_RETURN_IF_ERROR(workspace.allocate(bytes_b, &bp));
    opencl::Kernel rows, im2col;
    ANVIL_RETURN_IF_ERROR(rows.create(device, kSource, options, "pack_rows"));
    ANVIL_RETURN_IF_ERROR(im2col.create(device, kSource, options, "pack_im2col"));
    ANVIL_RETURN_IF_ERROR(rows.args(g_out.op.mem, cl_long(g_out.op.offset), cl_long(g_out.sn), cl_long(g_out.sc),
                                    cl_long(g_out.sh), cl_long(g_out.sw), cl_long(s.p), cl_long(s.q), cl_long(pixels),
                                    cl_long(pixels), cl_long(kg), ap, cl_long(panels_m)));
    const size_t local[3] = {kPackLocal, 1, 1};
    const size_t global_a[3] = {opencl::round_up(pixels, kPackLocal), size_t(panels_m), size_t(groups)};
    ANVIL_RETURN_IF_ERROR(rows.launch(ops.queue(), 3, global_a, local));
    ANVIL_RETURN_IF_ERROR(im2col.args(in.op.mem, cl_long(in.op.offset), cl_long(in.sn), cl_long(in.sc), cl_long(in.sh),
                                      cl_long(in.sw), cl_long(s.h), cl_long(s.w), cl_long(s.p), cl_long(s.q),
                                      cl_long(pixels), cl_long(pixels), cl_long(cg), cl_long(s.s), cl_long(cols),
                                      cl_long(geo.stride_h), cl_long(geo.stride_w), cl_long(geo.pad_h),
                                      cl_long(geo.pad_w), cl_long(geo.dilation_h), cl_long(geo.dilation_w), bp,
                                      cl_long(panels_n)));
    const size_t global_b[3] = {opencl::round_up(pixels, kPackLocal), size_t(panels_n), size_t(groups)};
    ANVIL_RETURN_IF_ERROR(im2col.launch(ops.queue(), 3, global_b, local));
  }
  opencl::Kernel tiles;
  ANVIL_RETURN_IF_ERROR(tiles.create(device, kSource, options, "conv_tiles"));
  ANVIL_RETURN_IF_ERROR(tiles.args(ap, bp, cl_long(pixels), cl_long(panels_m), cl_long(panels_n), dw.op.mem,
                                   cl_long(dw.op.offset), cl_long(dw.sn), cl_long(dw.sc), cl_long(dw.sh),
                                   cl_long(dw.sw), cl_long(kg), cl_long(cg), cl_long(s.s), cl_long(cols)));
  const size_t global[3] = {size_t(panels_m), size_t(panels_n), size_t(groups)};
  const size_t local[3] = {1, 1, 1};
  return tiles.launch(ops.queue(), 3, global, local);
}

// ------------------------------------------------------------------ records
int priority_of(const TensorRef& lead) { return lead.device.type == DeviceType::host ? kHostPriority : kPriority; }

Status forward_can_implement(const Conv2dArgs& args) {
  ANVIL_RETURN_IF_ERROR(args.bias ? opencl::operands_usable({&args.input, &args.weight, &args.output, &*args.bias})
                                  : opencl::operands_usable({&args.input, &args.weight, &args.output}));
  Config cfg;
  return config_of_call(opencl::device_of(args.input), &cfg);
}

Status forward_run(const Conv2dArgs& args) {
  const int device = opencl::device_of(args.input);
  Config cfg;
  ANVIL_RETURN_IF_ERROR(config_of_call(device, &cfg));
  const conv2d_desc::Shape s = conv2d_desc::shape_of(args.input, args.weight, args.params);
  opencl::Operands ops(device);
  ANVIL_RETURN_IF_ERROR(ops.status());
  opencl::Operand in, w, out;
  ANVIL_RETURN_IF_ERROR(ops.bind(args.input, opencl::Access::read, &in, "input"));
  ANVIL_RETURN_IF_ERROR(ops.bind(args.weight, opencl::Access::read, &w, "weight"));
  ANVIL_RETURN_IF_ERROR(ops.bind(args.output, opencl::Access::write, &out, "output"));
  Implicit c;
  c.src = image_of(args.input, in);
  c.dst = image_of(args.output, out);
  c.n = s.n, c.src_h = s.h, c.src_w = s.w, c.dst_h = s.p, c.dst_w = s.q;
  c.red_c = s.c_per_group(), c.dst_c = s.k_per_group(), c.groups = s.groups;
  c.taps_r = s.r, c.taps_s = s.s;
  c.geo = args.params;
  c.w = w;
  c.w_out = args.weight.strides[0], c.w_red = args.weight.strides[1];
  c.w_r = args.weight.strides[2], c.w_s = args.weight.strides[3];
  c.out_group_step = s.k_per_group(), c.red_group_step = 0;
  if (args.bias) {
    ANVIL_RETURN_IF_ERROR(ops.bind(*args.bias, opencl::Access::read, &c.bias, "bias"));
    c.bias_stride = args.bias->strides[0];
    c.has_bias = true;
  }
  ANVIL_RETURN_IF_ERROR(run_implicit(ops, cfg, args.input.dtype, c));
  return ops.finish();
}

int forward_priority(const Conv2dArgs& args) { return priority_of(args.input); }

Status backward_can_implement(const Conv2dBackwardArgs& args) {
  std::vector<const TensorRef*> operands = {&args.input, &args.weight, &args.grad_output};
  for (const auto* g : {&args.grad_input, &args.grad_weight, &args.grad_bias})
    if (*g) operands.push_back(&**g);
  for (const TensorRef* t : operands) ANVIL_RETURN_IF_ERROR(opencl::operands_usable({&args.input, t}));
  Config cfg;
  return config_of_call(opencl::device_of(args.input), &cfg);
}

Status backward_run(const Conv2dBackwardArgs& args) {
  const int device = opencl::device_of(args.input);
  Config cfg;
  ANVIL_RETURN_IF_ERROR(config_of_call(device, &cfg));
  const conv2d_desc::Shape s = conv2d_desc::shape_of(args.input, args.weight, args.params);
  const DType dtype = args.input.dtype;
  opencl::Operands ops(device);
  ANVIL_RETURN_IF_ERROR(ops.status());
  opencl::Operand in, w, g_out;
  ANVIL_RETURN_IF_ERROR(ops.bind(args.input, opencl::Access::read, &in, "input"));
  ANVIL_RETURN_IF_ERROR(ops.bind(args.weight, opencl::Access::read, &w, "weight"));
  ANVIL_RETURN_IF_ERROR(ops.bind(args.grad_output, opencl::Access::read, &g_out, "grad_output"));
  const Image gi_img = image_of(args.grad_output, g_out);
  if (args.grad_input) {
    opencl::Operand out;
    ANVIL_RETURN_IF_ERROR(ops.bind(*args.grad_input, opencl::Access::write, &out, "grad_input"));
    Implicit c;
    c.src = gi_img;
    c.dst = image_of(*args.grad_input, out);
    c.n = s.n, c.src_h = s.p, c.src_w = s.q, c.dst_h = s.h, c.dst_w = s.w;
    c.red_c = s.k_per_group(), c.dst_c = s.c_per_group(), c.groups = s.groups;
    c.taps_r = s.r, c.taps_s = s.s;
    c.geo = args.params;
    c.transposed = true;
    c.w = w;
    c.w_out = args.weight.strides[1], c.w_red = args.weight.strides[0];
    c.w_r = args.weight.strides[2], c.w_s = args.weight.strides[3];
    c.out_group_step = 0, c.red_group_step = s.k_per_group();
    ANVIL_RETURN_IF_ERROR(run_implicit(ops, cfg, dtype, c));
  }
  if (args.grad_weight) {
    opencl::Operand out;
    ANVIL_RETURN_IF_ERROR(ops.bind(*args.grad_weight, opencl::Access::write, &out, "grad_weight"));
    ANVIL_RETURN_IF_ERROR(run_grad_weight(ops, cfg, dtype, s, args.params, gi_img, image_of(args.input, in),
                                          image_of(*args.grad_weight, out)));
  }
  if (args.grad_bias && s.k > 0) {
    opencl::Operand out;
    ANVIL_RETURN_IF_ERROR(ops.bind(*args.grad_bias, opencl::Access::write, &out, "grad_bias"));
    opencl::Kernel sums;
    ANVIL_RETURN_IF_ERROR(sums.create(device, kSource, build_options(cfg, dtype), "bias_sums"));
    ANVIL_RETURN_IF_ERROR(sums.args(g_out.mem, cl_long(g_out.offset), cl_long(gi_img.sn), cl_long(gi_img.sc),
                                    cl_long(gi_img.sh), cl_long(gi_img.sw), cl_long(s.n), cl_long(s.p), cl_long(s.q),
                                    cl_long(s.k), out.mem, cl_long(out.offset), cl_long(args.grad_bias->strides[0])));
    const size_t global[1] = {opencl::round_up(s.k, kPackLocal)}, local[1] = {kPackLocal};
    ANVIL_RETURN_IF_ERROR(sums.launch(ops.queue(), 1, global, local));
  }
  return ops.finish();
}

int backward_priority(const Conv2dBackwardArgs& args) { return priority_of(args.input); }

}  // namespace

void add_conv2d_kernels(dispatch::KernelTables& tables) {
  using dispatch::kernel_name;
  for (DType dtype : {DType::f32, DType::f16, DType::bf16}) {
    dispatch::KernelRecord<Conv2dArgs> forward{kernel_name(Op::conv2d, dtype, "opencl", "implicit"), "opencl", dtype,
                                               kPriority, forward_can_implement, forward_run};
    forward.priority_for = forward_priority;
    tables.add(forward);
    dispatch::KernelRecord<Conv2dBackwardArgs> backward{kernel_name(Op::conv2d_backward, dtype, "opencl", "implicit"),
                                                        "opencl", dtype, kPriority, backward_can_implement,
                                                        backward_run};
    backward.priority_for = backward_priority;
    tables.add(backward);
  }
}

}  // namespace anvil::opencl_conv2d
