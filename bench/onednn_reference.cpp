#include "bench/onednn_reference.h"

#include <memory>
#include <vector>

#include <oneapi/dnnl/dnnl.hpp>

namespace anvil::bench {
namespace {
using dnnl::memory;
using tag = memory::format_tag;
constexpr auto f32 = memory::data_type::f32;
}  // namespace

std::function<void()> onednn_matmul(int64_t m, int64_t n, int64_t k, float* a, float* b, float* c) {
  struct State {
    dnnl::engine engine{dnnl::engine::kind::cpu, 0};
    dnnl::stream stream{engine};
    dnnl::matmul primitive;
    std::unordered_map<int, memory> args;
  };
  auto st = std::make_shared<State>();
  const memory::desc ad({1, m, k}, f32, tag::abc), bd({1, k, n}, f32, tag::abc), cd({1, m, n}, f32, tag::abc);
  st->primitive = dnnl::matmul(dnnl::matmul::primitive_desc(st->engine, ad, bd, cd));
  st->args = {{DNNL_ARG_SRC, memory(ad, st->engine, a)},
              {DNNL_ARG_WEIGHTS, memory(bd, st->engine, b)},
              {DNNL_ARG_DST, memory(cd, st->engine, c)}};
  return [st] {
    st->primitive.execute(st->stream, st->args);
    st->stream.wait();
  };
}

std::function<void()> onednn_conv_nhwc(int64_t n, int64_t c, int64_t h, int64_t w, int64_t k, int64_t r, int64_t s,
                                       int64_t stride, int64_t pad, float* input, float* weight, float* output,
                                       bool prepacked) {
  struct State {
    dnnl::engine engine{dnnl::engine::kind::cpu, 0};
    dnnl::stream stream{engine};
    dnnl::convolution_forward conv;
    dnnl::reorder weight_reorder;
    memory user_weight, packed_weight, src, dst;
    std::vector<char> packed_storage;
  };
  auto st = std::make_shared<State>();
  const int64_t p = (h + 2 * pad - r) / stride + 1, q = (w + 2 * pad - s) / stride + 1;
  const memory::desc src({n, c, h, w}, f32, tag::nhwc), dst({n, k, p, q}, f32, tag::nhwc);
  const memory::desc user_weight({k, c, r, s}, f32, tag::ohwi), any_weight({k, c, r, s}, f32, tag::any);
  const memory::dims right = {(p - 1) * stride + r - h - pad, (q - 1) * stride + s - w - pad};
  const auto pd = dnnl::convolution_forward::primitive_desc(
      st->engine, dnnl::prop_kind::forward_inference, dnnl::algorithm::convolution_direct, src, any_weight, dst,
      {stride, stride}, {0, 0}, {pad, pad}, right);
  st->conv = dnnl::convolution_forward(pd);
  st->src = memory(src, st->engine, input);
  st->dst = memory(dst, st->engine, output);
  st->user_weight = memory(user_weight, st->engine, weight);
  st->packed_storage.resize(pd.weights_desc().get_size());
  st->packed_weight = memory(pd.weights_desc(), st->engine, st->packed_storage.data());
  st->weight_reorder = dnnl::reorder(st->user_weight, st->packed_weight);
  auto pack = [st] { st->weight_reorder.execute(st->stream, st->user_weight, st->packed_weight); };
  if (prepacked) pack();
  return [st, prepacked, pack] {
    if (!prepacked) pack();
    st->conv.execute(st->stream,
                     {{DNNL_ARG_SRC, st->src}, {DNNL_ARG_WEIGHTS, st->packed_weight}, {DNNL_ARG_DST, st->dst}});
    st->stream.wait();
  };
}

}  // namespace anvil::bench
