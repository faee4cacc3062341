#include "backends/oneapi/oneapi_runtime.h"

#include <algorithm>
#include <new>

#include "anvil/runtime.h"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace anvil::oneapi {
namespace {

struct EngineState {
  dnnl::engine engine;
  Status status;
};

const EngineState& engine_state() {
  static const EngineState state = [] {
    EngineState s;
    if (dnnl::engine::get_count(dnnl::engine::kind::cpu) == 0) {
      s.status = unsupported("oneDNN was built without a CPU engine");
      return s;
    }
    s.status = guarded("engine creation", [&] { s.engine = dnnl::engine(dnnl::engine::kind::cpu, 0); });
    return s;
  }();
  return state;
}

dnnl::stream& thread_stream() {
  thread_local dnnl::stream stream(engine());
  return stream;
}

}  // namespace

Status available() { return engine_state().status; }
const dnnl::engine& engine() { return engine_state().engine; }

std::string describe() {
  const dnnl_version_t* v = dnnl_version();
  std::string s = "oneDNN " + std::to_string(v->major) + "." + std::to_string(v->minor) + "." +
                  std::to_string(v->patch) + " (cpu runtime ";
  s += v->cpu_runtime == DNNL_RUNTIME_OMP ? "OpenMP" : v->cpu_runtime == DNNL_RUNTIME_TBB ? "TBB" : "other";
  s += v->gpu_runtime == DNNL_RUNTIME_NONE ? ", no GPU engine)" : ", with a GPU engine)";
  return s;
}

dnnl::memory::data_type data_type(DType dtype) {
  using dt = dnnl::memory::data_type;
  switch (dtype) {
    case DType::f32: return dt::f32;
    case DType::f16: return dt::f16;
    case DType::bf16: return dt::bf16;
    default: return dt::undef;
  }
}

dnnl::memory::desc Operand::desc() const {
  // A dim of size 1 is never stepped over: give it the stride a dense layout would have, so
  // views that differ only there share one descriptor (and one cached primitive).
  Dims s = strides;
  for (size_t i = dims.size(); i-- > 0;)
    if (dims[i] == 1) s[i] = i + 1 < dims.size() ? std::max<int64_t>(s[i + 1] * dims[i + 1], 1) : 1;
  return dnnl::memory::desc(dims.to_vector(), data_type(dtype), s.to_vector());
}

dnnl::memory Operand::memory() const { return dnnl::memory(desc(), engine(), data); }

int64_t Operand::numel() const {
  int64_t n = 1;
  for (int64_t d : dims) n *= d;
  return n;
}

Operand operand_of(const TensorRef& t) {
  Operand op;
  op.dtype = t.dtype;
  for (int i = 0; i < t.rank; ++i) {
    op.dims.push_back(t.shape[size_t(i)]);
    op.strides.push_back(t.strides[size_t(i)]);
  }
  op.data = t.ptr();
  return op;
}

Operand dense(DType dtype, const Dims& dims, void* data) {
  Operand op;
  op.dtype = dtype;
  for (size_t i = 0; i < dims.size(); ++i) op.strides.push_back(1);
  for (size_t i = dims.size(); i-- > 1;) op.strides[i - 1] = op.strides[i] * std::max<int64_t>(dims[i], 1);
  op.dims = dims;
  op.data = data;
  return op;
}

Key& Key::add(const Operand& op) {
  add(int64_t(op.dtype)).add(int64_t(op.dims.size()));
  for (size_t i = 0; i < op.dims.size(); ++i) add(op.dims[i]).add(op.dims[i] == 1 ? 0 : op.strides[i]);
  return *this;
}

namespace {
// oneDNN's OpenMP runtime forks omp_get_max_threads() threads; hold it to anvil's budget
// for the duration of one primitive, restoring the caller's setting even on a throw.
class ThreadBudget {
 public:
  ThreadBudget() {
#ifdef _OPENMP
    budget_ = omp_in_parallel() ? 1 : cpu_threads();
    saved_ = omp_get_max_threads();
    if (budget_ != saved_) omp_set_num_threads(budget_);
#endif
  }
  ~ThreadBudget() {
#ifdef _OPENMP
    if (budget_ != saved_) omp_set_num_threads(saved_);
#endif
  }
  ThreadBudget(const ThreadBudget&) = delete;
  ThreadBudget& operator=(const ThreadBudget&) = delete;

 private:
  int budget_ = 1, saved_ = 1;
};
}  // namespace

void execute(const dnnl::primitive& primitive, const std::unordered_map<int, dnnl::memory>& args) {
  ThreadBudget budget;
  dnnl::stream& stream = thread_stream();
  primitive.execute(stream, args);
  stream.wait();
}

Status guarded(const char* what, const std::function<void()>& body) {
  try {
    body();
    return Status::Ok();
  } catch (const dnnl::error& e) {
    const StatusCode code = e.status == dnnl_unimplemented ? StatusCode::unsupported
                            : e.status == dnnl_out_of_memory ? StatusCode::out_of_memory
                                                             : StatusCode::runtime_error;
    return {code, std::string("oneDNN ") + what + ": " + e.what() + " (dnnl_status " + std::to_string(int(e.status)) + ")"};
  } catch (const std::bad_alloc&) {
    return {StatusCode::out_of_memory, std::string("oneDNN ") + what + ": out of host memory"};
  }
}

}  // namespace anvil::oneapi
