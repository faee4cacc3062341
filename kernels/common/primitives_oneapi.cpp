#include "kernels/common/primitives_oneapi.h"

#include <cstring>
#include <vector>

namespace anvil::oneapi {
namespace {

using dnnl::memory;

// Runs the primitive cached under key (made by make on a miss), with args bound by argument
// index. what names the primitive in errors.
template <class Make>
Status run_cached(const char* what, const Key& key, Make make, const std::unordered_map<int, memory>& args) {
  static PrimitiveCache<dnnl::primitive> cache;
  return guarded(what, [&] { execute(*cache.get(key, make), args); });
}

}  // namespace

Status matmul(const Operand& src, const Operand& weights, const Operand& dst, const MatmulEpilogue& epilogue) {
  const bool scaled = epilogue.alpha != 1.0;
  Key key("matmul");
  key.add(src).add(weights).add(dst).add(epilogue.beta).add(int64_t(scaled));
  if (epilogue.bias) key.add(*epilogue.bias);
  std::unordered_map<int, memory> args = {
      {DNNL_ARG_SRC, src.memory()}, {DNNL_ARG_WEIGHTS, weights.memory()}, {DNNL_ARG_DST, dst.memory()}};
  if (epilogue.bias) args.emplace(DNNL_ARG_BIAS, epilogue.bias->memory());
  float alpha = float(epilogue.alpha);
  if (scaled)
    args.emplace(DNNL_ARG_ATTR_SCALES | DNNL_ARG_WEIGHTS,
                 memory(memory::desc({1}, memory::data_type::f32, memory::format_tag::a), engine(), &alpha));
  return run_cached("matmul", key, [&]() -> dnnl::primitive {
    dnnl::primitive_attr attr;
    if (scaled) attr.set_scales_mask(DNNL_ARG_WEIGHTS, 0);  // alpha, one value (mask 0)
    dnnl::post_ops post;
    if (epilogue.beta != 0.0) post.append_sum(float(epilogue.beta));
    attr.set_post_ops(post);
    const memory::desc bias = epilogue.bias ? epilogue.bias->desc() : memory::desc();
    return dnnl::matmul(dnnl::matmul::primitive_desc(engine(), src.desc(), weights.desc(), bias, dst.desc(), attr));
  }, args);
}

Status reduce_sum(const Operand& src, const Operand& dst) {
  if (src.dims == dst.dims) return reorder(src, dst);  // nothing to sum; oneDNN rejects it
  // oneDNN 3.2's CPU reduction misses 16-bit cases (f16 entirely, bf16 for some layouts):
  // 16-bit operands go through f32 copies.
  if (src.dtype != DType::f32) {
    std::vector<float> widened(size_t(src.numel()));
    const Operand wide = dense(DType::f32, src.dims, widened.data());
    ANVIL_RETURN_IF_ERROR(reorder(src, wide));
    return reduce_sum(wide, dst);
  }
  if (dst.dtype != DType::f32) {
    std::vector<float> sums(size_t(dst.numel()));
    const Operand wide = dense(DType::f32, dst.dims, sums.data());
    ANVIL_RETURN_IF_ERROR(reduce_sum(src, wide));
    return reorder(wide, dst);
  }
  Key key("reduce_sum");
  key.add(src).add(dst);
  return run_cached("reduction", key, [&]() -> dnnl::primitive {
    return dnnl::reduction(dnnl::reduction::primitive_desc(engine(), dnnl::algorithm::reduction_sum, src.desc(),
                                                           dst.desc(), 0.0f, 0.0f));
  }, {{DNNL_ARG_SRC, src.memory()}, {DNNL_ARG_DST, dst.memory()}});
}

Status scale(const Operand& dst, double factor) {
  Key key("scale");
  key.add(dst).add(factor);
  return run_cached("eltwise linear", key, [&]() -> dnnl::primitive {
    return dnnl::eltwise_forward(dnnl::eltwise_forward::primitive_desc(
        engine(), dnnl::prop_kind::forward_inference, dnnl::algorithm::eltwise_linear, dst.desc(), dst.desc(),
        float(factor), 0.0f));
  }, {{DNNL_ARG_SRC, dst.memory()}, {DNNL_ARG_DST, dst.memory()}});
}

Status reorder(const Operand& src, const Operand& dst) {
  Key key("reorder");
  key.add(src).add(dst);
  return run_cached("reorder", key, [&]() -> dnnl::primitive {
    return dnnl::reorder(dnnl::reorder::primitive_desc(engine(), src.desc(), engine(), dst.desc()));
  }, {{DNNL_ARG_FROM, src.memory()}, {DNNL_ARG_TO, dst.memory()}});
}

Status add(const Operand& src0, const Operand& src1, const Operand& dst) {
  Key key("add");
  key.add(src0).add(src1).add(dst);
  return run_cached("binary add", key, [&]() -> dnnl::primitive {
    return dnnl::binary(dnnl::binary::primitive_desc(engine(), dnnl::algorithm::binary_add, src0.desc(), src1.desc(),
                                                     dst.desc()));
  }, {{DNNL_ARG_SRC_0, src0.memory()}, {DNNL_ARG_SRC_1, src1.memory()}, {DNNL_ARG_DST, dst.memory()}});
}

namespace {
dnnl::softmax_forward::primitive_desc softmax_pd(const Operand& src, const Operand& dst) {
  return dnnl::softmax_forward::primitive_desc(engine(), dnnl::prop_kind::forward_training,
                                               dnnl::algorithm::softmax_accurate, src.desc(), dst.desc(),
                                               int(src.dims.size()) - 1);
}
}  // namespace

Status softmax(const Operand& src, const Operand& dst) {
  Key key("softmax");
  key.add(src).add(dst);
  return run_cached("softmax", key, [&]() -> dnnl::primitive { return dnnl::softmax_forward(softmax_pd(src, dst)); },
                    {{DNNL_ARG_SRC, src.memory()}, {DNNL_ARG_DST, dst.memory()}});
}

Status softmax_backward(const Operand& dst, const Operand& diff_dst, const Operand& diff_src) {
  Key key("softmax_backward");
  key.add(dst).add(diff_dst).add(diff_src);
  return run_cached("softmax backward", key, [&]() -> dnnl::primitive {
    return dnnl::softmax_backward(dnnl::softmax_backward::primitive_desc(
        engine(), dnnl::algorithm::softmax_accurate, diff_src.desc(), diff_dst.desc(), dst.desc(),
        int(dst.dims.size()) - 1, softmax_pd(dst, dst)));
  }, {{DNNL_ARG_DST, dst.memory()}, {DNNL_ARG_DIFF_DST, diff_dst.memory()}, {DNNL_ARG_DIFF_SRC, diff_src.memory()}});
}

namespace {
void fill_zero_from(const Operand& dst, size_t dim, char* base) {
  const int64_t step = dst.strides[dim] * int64_t(dtype_size(dst.dtype));
  for (int64_t i = 0; i < dst.dims[dim]; ++i) {
    char* p = base + i * step;
    if (dim + 1 < dst.dims.size()) fill_zero_from(dst, dim + 1, p);
    else std::memset(p, 0, dtype_size(dst.dtype));  // +0.0 in f32, f16 and bf16
  }
}
}  // namespace

Status fill_zero(const Operand& dst) {
  if (dst.numel() > 0) fill_zero_from(dst, 0, static_cast<char*>(dst.data));
  return Status::Ok();
}

}  // namespace anvil::oneapi
