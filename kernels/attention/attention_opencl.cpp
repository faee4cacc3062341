// Attention and its backward on the opencl backend: the host launchers of
// attention_opencl.cl (pack K and V to f32 per kv head, then the flash-style kernels), the
// configuration per device and the records.
//
// Configuration (the -D parameters of attention_opencl.cl): BQ query rows per score tile,
// NSUB tiles per forward work-item, VW-wide vectors, NKV key vectors per block, NOV value
// vectors per chunk; defaults per device class below, overridden by a tuned "attention"
// entry (opencl_tuning.h) or, for experiments, ANVIL_OPENCL_ATTENTION_PARAMS="BQ=12 ..."
// (an invalid value fails every call). DMAX, the bound of the head and value dims in
// private arrays, is a tier picked per call (64, 128, 256): one program per tier and dtype.
//
// Supports every dtype (f32 math), any strides, GQA/MQA, causal (top-left), boolean and
// additive masks broadcast to (B, H, Lq, Lk), head_dim and value_dim up to 256; refuses
// larger head dims with a message (another kernel takes them).
#include <algorithm>
#include <array>
#include <cstdlib>
#include <initializer_list>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "backends/opencl/opencl_runtime.h"
#include "backends/opencl/opencl_tuning.h"
#include "dispatch/kernel_record.h"
#include "kernels/attention/attention_desc.h"

namespace anvil::opencl_attention {
namespace {

constexpr const char* kSource = "attention_opencl";
constexpr int kPriority = 50;       // on opencl buffers: the only backend there
constexpr int kHostPriority = -10;  // on host memory: below the reference (0), and forced only
constexpr size_t kPackLocal = 16;   // fixed work-group of the packing kernels (PoCL compiles per size)
constexpr int64_t kDimTiers[] = {64, 128, 256};
constexpr int64_t kMaxDim = 256;

int dtype_code(DType dtype) { return dtype == DType::f16 ? 1 : dtype == DType::bf16 ? 2 : 0; }
int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
int64_t round_up(int64_t a, int64_t b) { return ceil_div(a, b) * b; }

// ------------------------------------------------------------------ configuration
struct Config {
  int bq = 8, vw = 16, nkv = 2, nov = 2, nsub = 1;
  int bk() const { return nkv * vw; }  // keys per block
  int ch() const { return nov * vw; }  // value columns per chunk
  int qb() const { return bq * nsub; }  // forward: query rows per work-item
  opencl::Params params() const { return {{"BQ", bq}, {"VW", vw}, {"NKV", nkv}, {"NOV", nov}, {"NSUB", nsub}}; }
};

Status apply_params(const opencl::Params& p, Config* cfg, const char* what) {
  for (const auto& [k, v] : p) {
    int* field = k == "BQ"    ? &cfg->bq
                 : k == "VW"  ? &cfg->vw
                 : k == "NKV" ? &cfg->nkv
                 : k == "NOV" ? &cfg->nov
                 : k == "NSUB" ? &cfg->nsub
                               : nullptr;
    if (!field) return invalid_argument(std::string(what) + ": unknown parameter " + k + "; valid: BQ VW NKV NOV NSUB");
    if (v < 1 || v > 64) return invalid_argument(std::string(what) + ": " + k + "=" + std::to_string(v) + " is out of range");
    *field = int(v);
  }
  if (cfg->vw != 1 && cfg->vw != 2 && cfg->vw != 4 && cfg->vw != 8 && cfg->vw != 16)
    return invalid_argument(std::string(what) + ": VW must be 1, 2, 4, 8 or 16");
  if (cfg->ch() > 64 || 64 % cfg->ch() != 0)
    return invalid_argument(std::string(what) + ": NOV * VW must divide 64 (the smallest head-dim tier)");
  if (cfg->bq * cfg->bk() > 512) return invalid_argument(std::string(what) + ": score tile BQ * NKV * VW above 512");
  if (cfg->qb() > 64) return invalid_argument(std::string(what) + ": BQ * NSUB above 64 rows");
  return Status::Ok();
}

// Defaults per device class: CPU devices get BQ rows x 2 vectors of their preferred width
// (8 x 2 float16 = 16 zmm accumulators on AVX-512) and 4 tiles (32 rows) per work-item,
// which read each K/V block from memory once for 32 rows (measured on PoCL 3.1, 2-core
// AVX-512 VM: 1.4x at seq 4096 over one tile per work-item; BQ 12 x 3, 6 x 5 and 4 x 8
// rows x 64 keys within noise of it). Other devices: a small tile (not measured here).
Config default_config(const opencl::DeviceInfo& info) {
  Config c;
  if (info.is_cpu()) {
    c.vw = info.preferred_vector_width_float >= 16 ? 16 : info.preferred_vector_width_float >= 8 ? 8 : 4;
    c.bq = 8, c.nkv = 2, c.nov = 2, c.nsub = 4;
  } else {
    c.vw = 4, c.bq = 4, c.nkv = 2, c.nov = 2;
  }
  return c;
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
    const opencl::ParamsLookup tuned = opencl::lookup_params(device, "attention");
    Config t = c;
    if (!tuned.params.empty() && apply_params(tuned.params, &t, "attention tuning").ok()) c = t;
    it = by_device->emplace(device, c).first;
  }
  *cfg = it->second;
  return Status::Ok();
}

Status config_of_call(int device, Config* cfg) {
  ANVIL_RETURN_IF_ERROR(device_config(device, cfg));
  const char* env = std::getenv("ANVIL_OPENCL_ATTENTION_PARAMS");
  if (!env || !*env) return Status::Ok();
  opencl::Params p;
  ANVIL_RETURN_IF_ERROR(opencl::parse_params(env, &p).with_context("ANVIL_OPENCL_ATTENTION_PARAMS: "));
  return apply_params(p, cfg, "ANVIL_OPENCL_ATTENTION_PARAMS");
}

// The private-array tier for head dim e and value dim ev (0 if above kMaxDim).
int64_t dim_tier(const Config& cfg, int64_t e, int64_t ev) {
  const int64_t need = std::max({e, round_up(e, cfg.ch()), round_up(ev, cfg.ch())});
  for (int64_t t : kDimTiers)
    if (need <= t) return t;
  return 0;
}

std::string build_options(const Config& cfg, int64_t tier, DType dtype) {
  opencl::Defines d;
  for (const auto& [k, v] : cfg.params()) d.add(k, v);
  d.add("DMAX", tier);
  d.add("DTYPE", dtype_code(dtype));
  return d.str();
}

// ------------------------------------------------------------------ launch helpers
struct View4 {  // a bound (b, h, i, e) operand
  opencl::Operand op;
  int64_t sb = 0, sh = 0, si = 0, se = 0;
};
View4 view_of(const TensorRef& t, const opencl::Operand& op) {
  return {op, t.strides[0], t.strides[1], t.strides[2], t.strides[3]};
}

Status float_bytes(std::initializer_list<int64_t> dims, int64_t* out) {
  int64_t x = 4;
  for (int64_t d : dims)
    if (__builtin_mul_overflow(x, d, &x)) return {StatusCode::out_of_memory, "opencl attention: workspace size overflows int64"};
  *out = x;
  return Status::Ok();
}

// dst[bh][col][row] (cols, rows_p) f32 from (b, h, row, col): K^T, V^T.
Status pack_transposed(opencl::Operands& ops, const std::string& options, const View4& src, int64_t bh, int64_t heads,
                       int64_t rows, int64_t cols, int64_t rows_p, cl_mem dst) {
  if (bh == 0 || cols == 0 || rows_p == 0) return Status::Ok();
  opencl::Kernel k;
  ANVIL_RETURN_IF_ERROR(k.create(ops.device(), kSource, options, "pack_transposed"));
  ANVIL_RETURN_IF_ERROR(k.args(src.op.mem, cl_long(src.op.offset), cl_long(src.sb), cl_long(src.sh), cl_long(src.si),
                               cl_long(src.se), cl_long(heads), cl_long(rows), cl_long(cols), cl_long(rows_p), dst));
  const size_t global[2] = {opencl::round_up(rows_p, kPackLocal), size_t(bh)};
  const size_t local[2] = {kPackLocal, 1};
  return k.launch(ops.queue(), 2, global, local);
}

// dst[bh][row][col] (rows_p, cols_p) f32 from (b, h, row, col): V, K rows.
Status pack_rows(opencl::Operands& ops, const std::string& options, const View4& src, int64_t bh, int64_t heads,
                 int64_t rows, int64_t cols, int64_t rows_p, int64_t cols_p, cl_mem dst) {
  if (bh == 0 || cols_p == 0 || rows_p == 0) return Status::Ok();
  opencl::Kernel k;
  ANVIL_RETURN_IF_ERROR(k.create(ops.device(), kSource, options, "pack_rows"));
  ANVIL_RETURN_IF_ERROR(k.args(src.op.mem, cl_long(src.op.offset), cl_long(src.sb), cl_long(src.sh), cl_long(src.si),
                               cl_long(src.se), cl_long(heads), cl_long(rows), cl_long(cols), cl_long(rows_p),
                               cl_long(cols_p), dst));
  const size_t global[2] = {opencl::round_up(rows_p, kPackLocal), size_t(bh)};
  const size_t local[2] = {kPackLocal, 1};
  return k.launch(ops.queue(), 2, global, local);
}

struct Mask {
  opencl::Operand op;
  std::array<int64_t, 4> strides{};
  int kind = 0;  // 0 none, 1 boolean, 2 additive
};
Status bind_mask(opencl::Operands& ops, const std::optional<TensorRef>& mask, Mask* out) {
  if (!mask) return Status::Ok();
  ANVIL_RETURN_IF_ERROR(ops.bind(*mask, opencl::Access::read, &out->op, "mask"));
  out->strides = attention_desc::mask_strides(*mask);
  out->kind = mask->dtype == DType::boolean ? 1 : 2;
  return Status::Ok();
}

// ------------------------------------------------------------------ records
int priority_of(const TensorRef& lead) { return lead.device.type == DeviceType::host ? kHostPriority : kPriority; }

Status check_dims(int device, const TensorRef& q, const TensorRef& k, const TensorRef& v) {
  Config cfg;
  ANVIL_RETURN_IF_ERROR(config_of_call(device, &cfg));
  const attention_desc::Shape s = attention_desc::shape_of(q, k, v);
  if (dim_tier(cfg, s.head_dim, s.value_dim) == 0)
    return unsupported("head_dim " + std::to_string(s.head_dim) + " / value_dim " + std::to_string(s.value_dim) +
                       ": the opencl kernels take up to " + std::to_string(kMaxDim));
  return Status::Ok();
}

Status forward_can_implement(const AttentionArgs& args) {
  std::vector<const TensorRef*> operands = {&args.q, &args.k, &args.v, &args.out};
  if (args.lse) operands.push_back(&*args.lse);
  if (args.mask) operands.push_back(&*args.mask);
  for (const TensorRef* t : operands) ANVIL_RETURN_IF_ERROR(opencl::operands_usable({&args.q, t}));
  return check_dims(opencl::device_of(args.q), args.q, args.k, args.v);
}

Status forward_run(const AttentionArgs& args) {
  const int device = opencl::device_of(args.q);
  Config cfg;
  ANVIL_RETURN_IF_ERROR(config_of_call(device, &cfg));
  const attention_desc::Shape s = attention_desc::shape_of(args.q, args.k, args.v);
  const int64_t tier = dim_tier(cfg, s.head_dim, s.value_dim);
  const std::string options = build_options(cfg, tier, args.q.dtype);
  opencl::Operands ops(device);
  ANVIL_RETURN_IF_ERROR(ops.status());
  opencl::Operand q, k, v, out, lse;
  ANVIL_RETURN_IF_ERROR(ops.bind(args.q, opencl::Access::read, &q, "q"));
  ANVIL_RETURN_IF_ERROR(ops.bind(args.k, opencl::Access::read, &k, "k"));
  ANVIL_RETURN_IF_ERROR(ops.bind(args.v, opencl::Access::read, &v, "v"));
  ANVIL_RETURN_IF_ERROR(ops.bind(args.out, opencl::Access::write, &out, "out"));
  if (args.lse) ANVIL_RETURN_IF_ERROR(ops.bind(*args.lse, opencl::Access::write, &lse, "lse"));
  Mask mask;
  ANVIL_RETURN_IF_ERROR(bind_mask(ops, args.mask, &mask));
  if (s.batch == 0 || s.heads == 0 || s.seq_q == 0) return ops.finish();

  const int64_t bh = s.batch * s.kv_heads;
  const int64_t lkp = round_up(s.seq_k, cfg.bk()), evp = round_up(s.value_dim, cfg.ch());
  opencl::Workspace workspace(device);
  cl_mem kt = nullptr, vr = nullptr;
  int64_t kt_bytes = 0, v_bytes = 0;
  ANVIL_RETURN_IF_ERROR(float_bytes({bh, s.head_dim, lkp}, &kt_bytes));
  ANVIL_RETURN_IF_ERROR(float_bytes({bh, lkp, evp}, &v_bytes));
  if (kt_bytes > 0) ANVIL_RETURN_IF_ERROR(workspace.allocate(kt_bytes, &kt));
  if (v_bytes > 0) ANVIL_RETURN_IF_ERROR(workspace.allocate(v_bytes, &vr));
  const View4 kview = view_of(args.k, k), vview = view_of(args.v, v);
  ANVIL_RETURN_IF_ERROR(pack_transposed(ops, options, kview, bh, s.kv_heads, s.seq_k, s.head_dim, lkp, kt));
  ANVIL_RETURN_IF_ERROR(pack_rows(ops, options, vview, bh, s.kv_heads, s.seq_k, s.value_dim, lkp, evp, vr));

  opencl::Kernel fwd;
  ANVIL_RETURN_IF_ERROR(fwd.create(device, kSource, options, "attention_forward"));
  const View4 qv = view_of(args.q, q), ov = view_of(args.out, out);
  const TensorRef* l = args.lse ? &*args.lse : nullptr;
  const float scale = float(attention_desc::scale_of(args.scale, s.head_dim));
  ANVIL_RETURN_IF_ERROR(fwd.args(
      q.mem, cl_long(q.offset), cl_long(qv.sb), cl_long(qv.sh), cl_long(qv.si), cl_long(qv.se), kt, vr, cl_long(lkp),
      cl_long(evp), out.mem, cl_long(out.offset), cl_long(ov.sb), cl_long(ov.sh), cl_long(ov.si), cl_long(ov.se),
      lse.mem, cl_long(lse.offset), cl_long(l ? l->strides[0] : 0), cl_long(l ? l->strides[1] : 0),
      cl_long(l ? l->strides[2] : 0), cl_int(l != nullptr), mask.op.mem, cl_long(mask.op.offset),
      cl_long(mask.strides[0]), cl_long(mask.strides[1]), cl_long(mask.strides[2]), cl_long(mask.strides[3]),
      cl_int(mask.kind), cl_int(args.causal), cl_long(s.kv_heads), cl_long(s.group()), cl_long(s.seq_q),
      cl_long(s.seq_k), cl_long(s.head_dim), cl_long(s.value_dim), scale));
  const size_t global[3] = {size_t(ceil_div(s.seq_q, cfg.qb())), size_t(s.heads), size_t(s.batch)};
  const size_t local[3] = {1, 1, 1};
  ANVIL_RETURN_IF_ERROR(fwd.launch(ops.queue(), 3, global, local));
  return ops.finish();
}

int forward_priority(const AttentionArgs& args) { return priority_of(args.q); }

Status backward_can_implement(const AttentionBackwardArgs& args) {
  std::vector<const TensorRef*> operands = {&args.q,   &args.k,      &args.v,      &args.out,   &args.grad_out,
                                            &args.lse, &args.grad_q, &args.grad_k, &args.grad_v};
  if (args.mask) operands.push_back(&*args.mask);
  for (const TensorRef* t : operands) ANVIL_RETURN_IF_ERROR(opencl::operands_usable({&args.q, t}));
  return check_dims(opencl::device_of(args.q), args.q, args.k, args.v);
}

Status backward_run(const AttentionBackwardArgs& args) {
  const int device = opencl::device_of(args.q);
  Config cfg;
  ANVIL_RETURN_IF_ERROR(config_of_call(device, &cfg));
  const attention_desc::Shape s = attention_desc::shape_of(args.q, args.k, args.v);
  const int64_t tier = dim_tier(cfg, s.head_dim, s.value_dim);
  const std::string options = build_options(cfg, tier, args.q.dtype);
  opencl::Operands ops(device);
  ANVIL_RETURN_IF_ERROR(ops.status());
  opencl::Operand q, k, v, out, dout, lse, dq, dk, dv;
  ANVIL_RETURN_IF_ERROR(ops.bind(args.q, opencl::Access::read, &q, "q"));
  ANVIL_RETURN_IF_ERROR(ops.bind(args.k, opencl::Access::read, &k, "k"));
  ANVIL_RETURN_IF_ERROR(ops.bind(args.v, opencl::Access::read, &v, "v"));
  ANVIL_RETURN_IF_ERROR(ops.bind(args.out, opencl::Access::read, &out, "out"));
  ANVIL_RETURN_IF_ERROR(ops.bind(args.grad_out, opencl::Access::read, &dout, "grad_out"));
  ANVIL_RETURN_IF_ERROR(ops.bind(args.lse, opencl::Access::read, &lse, "lse"));
  ANVIL_RETURN_IF_ERROR(ops.bind(args.grad_q, opencl::Access::write, &dq, "grad_q"));
  ANVIL_RETURN_IF_ERROR(ops.bind(args.grad_k, opencl::Access::write, &dk, "grad_k"));
  ANVIL_RETURN_IF_ERROR(ops.bind(args.grad_v, opencl::Access::write, &dv, "grad_v"));
  Mask mask;
  ANVIL_RETURN_IF_ERROR(bind_mask(ops, args.mask, &mask));
  if (s.batch == 0 || s.kv_heads == 0) return ops.finish();

  const int64_t bh = s.batch * s.kv_heads;
  const int64_t lkp = round_up(s.seq_k, cfg.bk()), ep = round_up(s.head_dim, cfg.ch());
  opencl::Workspace workspace(device);
  cl_mem kt = nullptr, vt = nullptr, kr = nullptr, dbuf = nullptr;
  int64_t kt_bytes = 0, vt_bytes = 0, kr_bytes = 0, d_bytes = 0;
  ANVIL_RETURN_IF_ERROR(float_bytes({bh, s.head_dim, lkp}, &kt_bytes));
  ANVIL_RETURN_IF_ERROR(float_bytes({bh, s.value_dim, lkp}, &vt_bytes));
  ANVIL_RETURN_IF_ERROR(float_bytes({bh, lkp, ep}, &kr_bytes));
  ANVIL_RETURN_IF_ERROR(float_bytes({s.batch, s.heads, s.seq_q}, &d_bytes));
  if (kt_bytes > 0) ANVIL_RETURN_IF_ERROR(workspace.allocate(kt_bytes, &kt));
  if (vt_bytes > 0) ANVIL_RETURN_IF_ERROR(workspace.allocate(vt_bytes, &vt));
  if (kr_bytes > 0) ANVIL_RETURN_IF_ERROR(workspace.allocate(kr_bytes, &kr));
  if (d_bytes > 0) ANVIL_RETURN_IF_ERROR(workspace.allocate(d_bytes, &dbuf));
  const View4 kview = view_of(args.k, k), vview = view_of(args.v, v);
  ANVIL_RETURN_IF_ERROR(pack_transposed(ops, options, kview, bh, s.kv_heads, s.seq_k, s.head_dim, lkp, kt));
  ANVIL_RETURN_IF_ERROR(pack_transposed(ops, options, vview, bh, s.kv_heads, s.seq_k, s.value_dim, lkp, vt));
  ANVIL_RETURN_IF_ERROR(pack_rows(ops, options, kview, bh, s.kv_heads, s.seq_k, s.head_dim, lkp, ep, kr));

  const View4 qv = view_of(args.q, q), ov = view_of(args.out, out), gv = view_of(args.grad_out, dout);
  const TensorRef& l = args.lse;
  if (d_bytes > 0) {
    opencl::Kernel rows;
    ANVIL_RETURN_IF_ERROR(rows.create(device, kSource, options, "row_dot"));
    ANVIL_RETURN_IF_ERROR(rows.args(dout.mem, cl_long(dout.offset), cl_long(gv.sb), cl_long(gv.sh), cl_long(gv.si),
                                    cl_long(gv.se), out.mem, cl_long(out.offset), cl_long(ov.sb), cl_long(ov.sh),
                                    cl_long(ov.si), cl_long(ov.se), cl_long(s.heads), cl_long(s.seq_q),
                                    cl_long(s.value_dim), dbuf));
    const size_t global[3] = {opencl::round_up(s.seq_q, kPackLocal), size_t(s.heads), size_t(s.batch)};
    const size_t local[3] = {kPackLocal, 1, 1};
    ANVIL_RETURN_IF_ERROR(rows.launch(ops.queue(), 3, global, local));
  }
  const float scale = float(attention_desc::scale_of(args.scale, s.head_dim));
  const size_t local[3] = {1, 1, 1};
  if (s.seq_k > 0) {
    opencl::Kernel kv;
    ANVIL_RETURN_IF_ERROR(kv.create(device, kSource, options, "attention_backward_kv"));
    const View4 dkv = view_of(args.grad_k, dk), dvv = view_of(args.grad_v, dv);
    ANVIL_RETURN_IF_ERROR(kv.args(
        q.mem, cl_long(q.offset), cl_long(qv.sb), cl_long(qv.sh), cl_long(qv.si), cl_long(qv.se), dout.mem,
        cl_long(dout.offset), cl_long(gv.sb), cl_long(gv.sh), cl_long(gv.si), cl_long(gv.se), kt, vt, cl_long(lkp),
        lse.mem, cl_long(lse.offset), cl_long(l.strides[0]), cl_long(l.strides[1]), cl_long(l.strides[2]), dbuf,
        mask.op.mem, cl_long(mask.op.offset), cl_long(mask.strides[0]), cl_long(mask.strides[1]),
        cl_long(mask.strides[2]), cl_long(mask.strides[3]), cl_int(mask.kind), cl_int(args.causal),
        cl_long(s.heads), cl_long(s.kv_heads), cl_long(s.group()), cl_long(s.seq_q), cl_long(s.seq_k),
        cl_long(s.head_dim), cl_long(s.value_dim), scale, dk.mem, cl_long(dk.offset), cl_long(dkv.sb),
        cl_long(dkv.sh), cl_long(dkv.si), cl_long(dkv.se), dv.mem, cl_long(dv.offset), cl_long(dvv.sb),
        cl_long(dvv.sh), cl_long(dvv.si), cl_long(dvv.se)));
    const size_t global[3] = {size_t(lkp / cfg.bk()), size_t(s.kv_heads), size_t(s.batch)};
    ANVIL_RETURN_IF_ERROR(kv.launch(ops.queue(), 3, global, local));
  }
  if (s.seq_q > 0 && s.heads > 0) {
    opencl::Kernel qk;
    ANVIL_RETURN_IF_ERROR(qk.create(device, kSource, options, "attention_backward_q"));
    const View4 dqv = view_of(args.grad_q, dq);
    ANVIL_RETURN_IF_ERROR(qk.args(
        q.mem, cl_long(q.offset), cl_long(qv.sb), cl_long(qv.sh), cl_long(qv.si), cl_long(qv.se), dout.mem,
        cl_long(dout.offset), cl_long(gv.sb), cl_long(gv.sh), cl_long(gv.si), cl_long(gv.se), kt, vt, kr,
        cl_long(lkp), cl_long(ep), lse.mem, cl_long(lse.offset), cl_long(l.strides[0]), cl_long(l.strides[1]),
        cl_long(l.strides[2]), dbuf, mask.op.mem, cl_long(mask.op.offset), cl_long(mask.strides[0]),
        cl_long(mask.strides[1]), cl_long(mask.strides[2]), cl_long(mask.strides[3]), cl_int(mask.kind),
        cl_int(args.causal), cl_long(s.heads), cl_long(s.kv_heads), cl_long(s.group()), cl_long(s.seq_q),
        cl_long(s.seq_k), cl_long(s.head_dim), cl_long(s.value_dim), scale, dq.mem, cl_long(dq.offset),
        cl_long(dqv.sb), cl_long(dqv.sh), cl_long(dqv.si), cl_long(dqv.se)));
    const size_t global[3] = {size_t(ceil_div(s.seq_q, cfg.bq)), size_t(s.heads), size_t(s.batch)};
    ANVIL_RETURN_IF_ERROR(qk.launch(ops.queue(), 3, global, local));
  }
  return ops.finish();
}

int backward_priority(const AttentionBackwardArgs& args) { return priority_of(args.q); }

}  // namespace

void add_attention_kernels(dispatch::KernelTables& tables) {
  using dispatch::kernel_name;
  for (DType dtype : {DType::f32, DType::f16, DType::bf16}) {
    dispatch::KernelRecord<AttentionArgs> forward{kernel_name(Op::attention, dtype, "opencl", "flash"), "opencl",
                                                  dtype, kPriority, forward_can_implement, forward_run};
    forward.priority_for = forward_priority;
    tables.add(forward);
    dispatch::KernelRecord<AttentionBackwardArgs> backward{
        kernel_name(Op::attention_backward, dtype, "opencl", "flash"), "opencl", dtype, kPriority,
        backward_can_implement, backward_run};
    backward.priority_for = backward_priority;
    tables.add(backward);
  }
}

}  // namespace anvil::opencl_attention
