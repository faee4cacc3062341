#include "kernels/common/primitives_oneapi.h"

#include <cstring>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace anvil::oneapi {
namespace {

using dnnl::memory;

// A created primitive and the memory descriptors of its arguments.
struct PrimitiveEntry {
  dnnl::primitive primitive;
  std::vector<std::pair<int, memory::desc>> arg_descs;
};

struct Binding {
  int arg;  // DNNL_ARG_*
  const Operand* operand;
};

// The arguments of one primitive run (at most 6), held inline.
class Bindings {
 public:
  Bindings(std::initializer_list<Binding> list) {
    for (const Binding& b : list) push_back(b);
  }
  void push_back(const Binding& b) { items_[size_++] = b; }
  const Binding* begin() const { return items_.data(); }
  const Binding* end() const { return items_.data() + size_; }
  size_t size() const { return size_; }

 private:
  std::array<Binding, 6> items_{};
  size_t size_ = 0;
};

// The calling thread's last few primitives, found again by comparing key bytes: a call
// repeated with the same descriptors skips the shared cache (hashing the key, its lock,
// its LRU update) and the lookup of its memory objects. Holding the entry keeps its
// memory-object slot alive.
class RecentPrimitives {
 public:
  struct Hit {
    const std::shared_ptr<const PrimitiveEntry>* entry;
    PlanMemories* memories;
  };
  std::optional<Hit> find(std::string_view key) const {
    for (const Recent& r : recent_)
      if (r.entry && r.key == key) return Hit{&r.entry, r.memories};
    return std::nullopt;
  }
  Hit remember(std::string_view key, std::shared_ptr<const PrimitiveEntry> entry) {
    Recent& r = recent_[next_];
    next_ = (next_ + 1) % recent_.size();
    r.key.assign(key);
    r.memories = &thread_memories(entry);
    r.entry = std::move(entry);
    return {&r.entry, r.memories};
  }

 private:
  struct Recent {
    std::string key;
    std::shared_ptr<const PrimitiveEntry> entry;
    PlanMemories* memories = nullptr;
  };
  std::array<Recent, 4> recent_;
  size_t next_ = 0;
};

// Runs the primitive cached under key (made by make on a miss) on the bound operands and,
// when asked, says how to run it again (Replay). what names the primitive in errors.
template <class Make>
Status run_cached(const char* what, const Key& key, Make make, const Bindings& bindings, int64_t flops = -1,
                  Replay* replay = nullptr) {
  static PrimitiveCache<PrimitiveEntry> cache;
  thread_local RecentPrimitives recent;
  return guarded(what, [&] {
    std::optional<RecentPrimitives::Hit> hit = recent.find(key.view());
    if (!hit) {
      hit = recent.remember(key.view(), cache.get(key, [&] {
        PrimitiveEntry e{make(), {}};
        for (const Binding& b : bindings) e.arg_descs.emplace_back(b.arg, b.operand->desc());
        return e;
      }));
    }
    const PrimitiveEntry& entry = **hit->entry;
    for (size_t i = 0; i < bindings.size(); ++i)
      hit->memories->bind(bindings.begin()[i].arg, entry.arg_descs[i].second, bindings.begin()[i].operand->data);
    execute(entry.primitive, hit->memories->all(), flops);
    if (replay) {
      *replay = Replay{*hit->entry, &entry.primitive, hit->memories, {}, bindings.size(), flops};
      for (size_t i = 0; i < bindings.size(); ++i)
        replay->handles[i] = {hit->memories->handle(bindings.begin()[i].arg), bindings.begin()[i].operand->data};
    }
  });
}

}  // namespace

Status Replay::run() const {
  return guarded("replayed primitive", [&] {
    for (size_t i = 0; i < handle_count; ++i) handles[i].first.point_at(handles[i].second);
    execute(*primitive, memories->all(), flops);
  });
}

Status matmul(const Operand& src, const Operand& weights, const Operand& dst, const MatmulEpilogue& epilogue,
              Replay* replay) {
  const bool scaled = epilogue.alpha != 1.0;
  if (scaled) replay = nullptr;  // alpha is bound from this stack frame
  Key key("matmul");
  key.add(src).add(weights).add(dst).add(epilogue.beta).add(int64_t(scaled));
  if (epilogue.bias) key.add(*epilogue.bias);
  float alpha = float(epilogue.alpha);
  const Operand alpha_operand{DType::f32, {1}, {1}, &alpha};
  Bindings bindings = {{DNNL_ARG_SRC, &src}, {DNNL_ARG_WEIGHTS, &weights}, {DNNL_ARG_DST, &dst}};
  if (epilogue.bias) bindings.push_back({DNNL_ARG_BIAS, &*epilogue.bias});
  if (scaled) bindings.push_back({DNNL_ARG_ATTR_SCALES | DNNL_ARG_WEIGHTS, &alpha_operand});
  return run_cached("matmul", key, [&]() -> dnnl::primitive {
    dnnl::primitive_attr attr;
    if (scaled) attr.set_scales_mask(DNNL_ARG_WEIGHTS, 0);  // alpha, one value (mask 0)
    dnnl::post_ops post;
    if (epilogue.beta != 0.0) post.append_sum(float(epilogue.beta));
    attr.set_post_ops(post);
    const memory::desc bias = epilogue.bias ? epilogue.bias->desc() : memory::desc();
    return dnnl::matmul(dnnl::matmul::primitive_desc(engine(), src.desc(), weights.desc(), bias, dst.desc(), attr));
  }, bindings, 2 * dst.numel() * src.dims[src.dims.size() - 1], replay);
}

Status reduce_sum(const Operand& src, const Operand& dst) {
  if (src.dims == dst.dims) return reorder(src, dst);  // nothing to sum; oneDNN rejects it
  // oneDNN 3.2's CPU reduction misses 16-bit cases (f16 entirely, bf16 for some layouts):
  // 16-bit operands go through f32 copies.
  Workspace ws;
  if (src.dtype != DType::f32) {
    const Operand wide = dense(DType::f32, src.dims, ws.get<float>(src.numel()));
    ANVIL_RETURN_IF_ERROR(reorder(src, wide));
    return reduce_sum(wide, dst);
  }
  if (dst.dtype != DType::f32) {
    const Operand wide = dense(DType::f32, dst.dims, ws.get<float>(dst.numel()));
    ANVIL_RETURN_IF_ERROR(reduce_sum(src, wide));
    return reorder(wide, dst);
  }
  Key key("reduce_sum");
  key.add(src).add(dst);
  return run_cached("reduction", key, [&]() -> dnnl::primitive {
    return dnnl::reduction(dnnl::reduction::primitive_desc(engine(), dnnl::algorithm::reduction_sum, src.desc(),
                                                           dst.desc(), 0.0f, 0.0f));
  }, {{DNNL_ARG_SRC, &src}, {DNNL_ARG_DST, &dst}});
}

Status scale(const Operand& dst, double factor) {
  Key key("scale");
  key.add(dst).add(factor);
  return run_cached("eltwise linear", key, [&]() -> dnnl::primitive {
    return dnnl::eltwise_forward(dnnl::eltwise_forward::primitive_desc(
        engine(), dnnl::prop_kind::forward_inference, dnnl::algorithm::eltwise_linear, dst.desc(), dst.desc(),
        float(factor), 0.0f));
  }, {{DNNL_ARG_SRC, &dst}, {DNNL_ARG_DST, &dst}});
}

Status reorder(const Operand& src, const Operand& dst) {
  Key key("reorder");
  key.add(src).add(dst);
  return run_cached("reorder", key, [&]() -> dnnl::primitive {
    return dnnl::reorder(dnnl::reorder::primitive_desc(engine(), src.desc(), engine(), dst.desc()));
  }, {{DNNL_ARG_FROM, &src}, {DNNL_ARG_TO, &dst}});
}

Status add(const Operand& src0, const Operand& src1, const Operand& dst) {
  Key key("add");
  key.add(src0).add(src1).add(dst);
  return run_cached("binary add", key, [&]() -> dnnl::primitive {
    return dnnl::binary(dnnl::binary::primitive_desc(engine(), dnnl::algorithm::binary_add, src0.desc(), src1.desc(),
                                                     dst.desc()));
  }, {{DNNL_ARG_SRC_0, &src0}, {DNNL_ARG_SRC_1, &src1}, {DNNL_ARG_DST, &dst}});
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
                    {{DNNL_ARG_SRC, &src}, {DNNL_ARG_DST, &dst}});
}

Status softmax_backward(const Operand& dst, const Operand& diff_dst, const Operand& diff_src) {
  Key key("softmax_backward");
  key.add(dst).add(diff_dst).add(diff_src);
  return run_cached("softmax backward", key, [&]() -> dnnl::primitive {
    return dnnl::softmax_backward(dnnl::softmax_backward::primitive_desc(
        engine(), dnnl::algorithm::softmax_accurate, diff_src.desc(), diff_dst.desc(), dst.desc(),
        int(dst.dims.size()) - 1, softmax_pd(dst, dst)));
  }, {{DNNL_ARG_DST, &dst}, {DNNL_ARG_DIFF_DST, &diff_dst}, {DNNL_ARG_DIFF_SRC, &diff_src}});
}

namespace {
// Calls visit(element address) for every element of op, in row-major order.
// i * stride stays within the validated span; a size-1 dim may carry any stride.
template <class Visit> void for_each_element(const Operand& op, size_t dim, char* base, const Visit& visit) {
  for (int64_t i = 0; i < op.dims[dim]; ++i) {
    char* p = i == 0 ? base : base + i * op.strides[dim] * int64_t(dtype_size(op.dtype));
    if (dim + 1 < op.dims.size()) for_each_element(op, dim + 1, p, visit);
    else visit(p);
  }
}
}  // namespace

void gather_dense(const Operand& src, void* dst) {
  if (src.numel() == 0) return;
  const size_t elem = dtype_size(src.dtype);
  char* out = static_cast<char*>(dst);
  for_each_element(src, 0, static_cast<char*>(src.data), [&](const char* p) {
    std::memcpy(out, p, elem);
    out += elem;
  });
}

Status fill_zero(const Operand& dst) {
  const size_t elem = dtype_size(dst.dtype);
  if (dst.numel() > 0)
    for_each_element(dst, 0, static_cast<char*>(dst.data), [&](char* p) { std::memset(p, 0, elem); });  // +0.0
  return Status::Ok();
}

}  // namespace anvil::oneapi
