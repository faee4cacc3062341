#include "backends/oneapi/oneapi_runtime.h"

#include <algorithm>
#include <cstdlib>
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
  std::string isa;
  switch (dnnl::get_effective_cpu_isa()) {
    case dnnl::cpu_isa::avx512_core_amx: isa = "avx512_core_amx"; break;
    case dnnl::cpu_isa::avx512_core_fp16: isa = "avx512_core_fp16"; break;
    case dnnl::cpu_isa::avx512_core_bf16: isa = "avx512_core_bf16"; break;
    case dnnl::cpu_isa::avx512_core: isa = "avx512_core"; break;
    case dnnl::cpu_isa::avx2: isa = "avx2"; break;
    default: isa = "other ISA"; break;
  }
  return "oneDNN " + std::to_string(v->major) + "." + std::to_string(v->minor) + "." + std::to_string(v->patch) +
         ", CPU engine (" + (v->cpu_runtime == DNNL_RUNTIME_OMP ? "OpenMP" : "other threading") + ", " + isa + "), " +
         (v->gpu_runtime == DNNL_RUNTIME_NONE ? "no GPU engine" : "with a GPU engine");
}

Status computes_in(DType dtype) {
  static const std::array<Status, 3> probed = [] {
    std::array<Status, 3> out;
    const DType dtypes[3] = {DType::f32, DType::bf16, DType::f16};
    for (int i = 0; i < 3; ++i) {
      if (!available().ok()) {
        out[size_t(i)] = available();
        continue;
      }
      const dnnl::memory::desc one({1, 1}, data_type(dtypes[i]), dnnl::memory::format_tag::ab);
      try {
        dnnl::matmul::primitive_desc(engine(), one, one, one);
      } catch (const dnnl::error&) {
        out[size_t(i)] = unsupported(describe() + ": no " + dtype_name(dtypes[i]) + " matmul on this CPU");
      }
    }
    return out;
  }();
  switch (dtype) {
    case DType::f32: return probed[0];
    case DType::bf16: return probed[1];
    case DType::f16: return probed[2];
    default: return unsupported(std::string("oneDNN computes no ") + dtype_name(dtype));
  }
}

template <DType kDtype> Status computes_in_dtype() { return computes_in(kDtype); }

RunsHere computes_in_for(DType dtype) {
  switch (dtype) {
    case DType::bf16: return &computes_in_dtype<DType::bf16>;
    case DType::f16: return &computes_in_dtype<DType::f16>;
    default: return &computes_in_dtype<DType::f32>;
  }
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
  // A dim of size 1 is never stepped over, so its stride is free; give it the one oneDNN's
  // plain format tags give it, so that views which differ only there share a descriptor
  // (and a cached primitive) and oneDNN recognises their format: an inner dim gets the
  // dense stride of its place (the next dim's stride times its extent), the outermost dim
  // the span of the others (an NHWC image with N = 1 is then nhwc, not some other order).
  Dims s = strides;
  for (size_t i = dims.size(); i-- > 1;)
    if (dims[i] == 1) s[i] = i + 1 < dims.size() ? std::max<int64_t>(s[i + 1] * dims[i + 1], 1) : 1;
  if (dims.size() > 0 && dims[0] == 1) {
    int64_t span = 1;
    for (size_t i = 1; i < dims.size(); ++i) span = std::max(span, s[i] * std::max<int64_t>(dims[i], 1));
    s[0] = span;
  }
  return dnnl::memory::desc(dims.to_vector(), data_type(dtype), s.to_vector());
}

dnnl::memory Operand::memory() const { return dnnl::memory(desc(), engine(), data); }

int64_t Operand::numel() const {
  int64_t n = 1;
  for (int64_t d : dims) n *= d;
  return n;
}

bool Operand::overlaps() const {
  // Dims that step (extent > 1) by increasing stride: each must step over all the smaller ones reach.
  std::array<size_t, Dims::kCapacity> order{};
  size_t count = 0;
  for (size_t i = 0; i < dims.size(); ++i)
    if (dims[i] > 1) order[count++] = i;
  std::sort(order.begin(), order.begin() + count, [&](size_t x, size_t y) { return strides[x] < strides[y]; });
  int64_t reach = 1;
  for (size_t j = 0; j < count; ++j) {
    if (strides[order[j]] < reach) return true;
    reach = strides[order[j]] * dims[order[j]];
  }
  return false;
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

struct PoolBuffer {
  std::unique_ptr<char, decltype(&std::free)> data{nullptr, &std::free};
  size_t capacity = 0;
  bool busy = false;
};

std::vector<PoolBuffer>& thread_pool() {
  thread_local std::vector<PoolBuffer> pool;
  return pool;
}

}  // namespace

Workspace::~Workspace() {
  auto& pool = thread_pool();
  for (size_t i : taken_) pool[i].busy = false;
}

void* Workspace::get(size_t bytes) {
  auto& pool = thread_pool();
  bytes = std::max<size_t>((bytes + 63) / 64 * 64, 64);
  // The smallest free buffer that fits; else grow the largest free one; else a new one.
  size_t pick = pool.size();
  for (size_t i = 0; i < pool.size(); ++i) {
    if (pool[i].busy) continue;
    const bool fits = pool[i].capacity >= bytes;
    if (pick == pool.size()) pick = i;
    else if (fits && (pool[pick].capacity < bytes || pool[i].capacity < pool[pick].capacity)) pick = i;
    else if (!fits && pool[pick].capacity < bytes && pool[i].capacity > pool[pick].capacity) pick = i;
  }
  if (pick == pool.size()) pool.emplace_back();
  PoolBuffer& buffer = pool[pick];
  if (buffer.capacity < bytes) {
    buffer.data.reset(static_cast<char*>(std::aligned_alloc(64, bytes)));
    if (!buffer.data) {
      buffer.capacity = 0;
      throw std::bad_alloc();
    }
    buffer.capacity = bytes;
  }
  buffer.busy = true;
  taken_.push_back(pick);
  return buffer.data.get();
}

namespace {
// Below this many flops a second thread costs more than it gives. oneDNN matmul on 2
// Sapphire Rapids cores: 32^3 runs in 1.9 us on one thread, 3.5 us on two; 64^3 breaks
// even. On 2 Zen 4 cores (one process, alternating): one thread 1.5x faster at 24^3, 1.36x
// at 32^3, even at 48^3; two threads 1.28x faster at 64^3 and 1.11x at 80^3 (with one, the
// oneapi 64^3 GEMM ran at 0.74x oneDNN's own default of two threads).
constexpr int64_t kSerialFlops = 1 << 18;

// oneDNN's OpenMP runtime forks omp_get_max_threads() threads; hold it to anvil's budget
// for the duration of one primitive, restoring the caller's setting even on a throw.
class ThreadBudget {
 public:
  explicit ThreadBudget(int64_t flops) {
#ifdef _OPENMP
    budget_ = omp_in_parallel() || (flops >= 0 && flops < kSerialFlops) ? 1 : cpu_threads();
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

const dnnl::memory& PlanMemories::bind(int slot, const dnnl::memory::desc& desc, void* data) {
  auto it = memories_.find(slot);
  if (it == memories_.end()) {
    handles_[slot] = data;
    return memories_.emplace(slot, dnnl::memory(desc, engine(), data)).first->second;
  }
  rebind(slot, data);
  return it->second;
}

PlanMemories& thread_memories(const std::shared_ptr<const void>& plan) {
  struct Slot {
    std::weak_ptr<const void> owner;
    PlanMemories memories;
  };
  thread_local std::unordered_map<const void*, Slot> slots;
  auto it = slots.find(plan.get());
  if (it != slots.end() && !it->second.owner.expired()) return it->second.memories;
  if (slots.size() > 4096) {  // drop the slots of evicted plans
    std::erase_if(slots, [](const auto& kv) { return kv.second.owner.expired(); });
    it = slots.find(plan.get());
  }
  Slot& slot = it != slots.end() ? it->second : slots[plan.get()];
  slot.owner = plan;
  slot.memories = {};
  return slot.memories;
}

void execute(const dnnl::primitive& primitive, const std::unordered_map<int, dnnl::memory>& args, int64_t flops) {
  ThreadBudget budget(flops);
  dnnl::stream& stream = thread_stream();
  primitive.execute(stream, args);
  stream.wait();
}

Status error_status(const char* what, const dnnl::error& e) {
  const StatusCode code = e.status == dnnl_unimplemented    ? StatusCode::unsupported
                          : e.status == dnnl_out_of_memory ? StatusCode::out_of_memory
                                                           : StatusCode::runtime_error;
  return {code, std::string("oneDNN ") + what + ": " + e.what() + " (dnnl_status " + std::to_string(int(e.status)) + ")"};
}

Status out_of_memory_status(const char* what) {
  return {StatusCode::out_of_memory, std::string("oneDNN ") + what + ": out of host memory"};
}

}  // namespace anvil::oneapi
