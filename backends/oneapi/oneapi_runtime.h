// oneDNN as the oneapi backend sees it: the engine and a stream per thread, the mapping of
// anvil dtypes and strided views onto memory descriptors, a cache of created primitives,
// and the translation of oneDNN errors into Status. No op math here.
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <list>
#include <memory>
#include <mutex>
#include <new>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>
#include <unordered_map>
#include <vector>

#include <oneapi/dnnl/dnnl.hpp>

#include "anvil/status.h"
#include "anvil/tensor.h"

namespace anvil::oneapi {

// Ok when oneDNN's CPU engine could be created; otherwise why not.
Status available();
const dnnl::engine& engine();
// "oneDNN 3.2.0, CPU engine (OpenMP, avx512_core_amx), no GPU engine", for backends().
std::string describe();

// oneDNN's data type for an anvil dtype; data_type::undef for f64 and boolean, which the
// primitives used here do not take.
dnnl::memory::data_type data_type(DType dtype);

// Ok if oneDNN's CPU engine computes in `dtype` on this CPU, else why not. oneDNN 3.2's
// f16 matmul, convolution and eltwise need avx512_core_fp16 (Sapphire Rapids); on a CPU
// without it (Zen 4) every f16 primitive descriptor fails. Probed once per dtype with a
// 1x1x1 matmul.
Status computes_in(DType dtype);
// computes_in(dtype) as a KernelRecord::runs_here, for the records of that dtype.
using RunsHere = Status (*)();
RunsHere computes_in_for(DType dtype);

// Up to 6 extents or strides, held inline: operands are built on every call, and a
// heap allocation per operand would cost more than a small primitive's run.
class Dims {
 public:
  static constexpr size_t kCapacity = 6;
  Dims() = default;
  Dims(std::initializer_list<int64_t> values) {
    for (int64_t v : values) push_back(v);
  }
  size_t size() const { return size_; }
  int64_t& operator[](size_t i) { return values_[i]; }
  int64_t operator[](size_t i) const { return values_[i]; }
  const int64_t* begin() const { return values_.data(); }
  const int64_t* end() const { return values_.data() + size_; }
  void push_back(int64_t v) { values_[size_++] = v; }
  void push_front(int64_t v) {
    for (size_t i = size_++; i > 0; --i) values_[i] = values_[i - 1];
    values_[0] = v;
  }
  dnnl::memory::dims to_vector() const { return {begin(), end()}; }
  friend bool operator==(const Dims& x, const Dims& y) {
    return x.size_ == y.size_ && std::equal(x.begin(), x.end(), y.begin());
  }

 private:
  std::array<int64_t, kCapacity> values_{};
  size_t size_ = 0;
};

// A strided operand as a primitive sees it: logical dims (size-1 dims broadcast where
// the primitive allows it), element strides, and the address of element 0.
struct Operand {
  DType dtype = DType::f32;
  Dims dims, strides;
  void* data = nullptr;

  dnnl::memory::desc desc() const;
  dnnl::memory memory() const;
  int64_t numel() const;
  // Whether two elements share an address (a zero stride, or strides that interleave):
  // oneDNN cannot describe such a view.
  bool overlaps() const;
};
Operand operand_of(const TensorRef& t);
// A dense row-major operand over `data` (a workspace).
Operand dense(DType dtype, const Dims& dims, void* data);

// Builds cache keys from the values that decide a primitive (dims, strides, dtypes,
// attributes): binary, not formatted.
class Key {
 public:
  explicit Key(const char* kind) { append(kind, std::strlen(kind)); }
  Key& add(int64_t v) { return append(&v, sizeof v); }
  Key& add(double v) { return append(&v, sizeof v); }
  Key& add(const Operand& op);
  std::string_view view() const { return {bytes_.data(), size_}; }

 private:
  Key& append(const void* data, size_t n) {
    if (size_ + n > bytes_.size()) throw std::length_error("anvil oneapi: primitive key too long");
    std::memcpy(bytes_.data() + size_, data, n);
    size_ += n;
    return *this;
  }
  std::array<char, 640> bytes_;  // inline: building a key allocates nothing (a key is < 400 bytes)
  size_t size_ = 0;
};

// Primitives by key, so that a repeated call creates nothing (creating a primitive
// descriptor costs tens of microseconds, a JIT kernel milliseconds). Least recently used
// entries are dropped beyond the capacity. Thread-safe; entries are immutable.
template <class Entry> class PrimitiveCache {
 public:
  explicit PrimitiveCache(size_t capacity = 512) : capacity_(capacity) {}

  // The entry for key, made by make() (which may throw dnnl::error) on a miss.
  template <class Make> std::shared_ptr<const Entry> get(const Key& key, const Make& make) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      auto it = map_.find(key.view());
      if (it != map_.end()) {
        order_.splice(order_.begin(), order_, it->second.second);
        return it->second.first;
      }
    }
    auto entry = std::make_shared<const Entry>(make());  // outside the lock: may JIT for ms
    std::lock_guard<std::mutex> lock(mutex_);
    auto [it, inserted] = map_.try_emplace(std::string(key.view()), entry, order_.end());
    if (!inserted) return it->second.first;  // another thread made it first
    order_.push_front(it->first);
    it->second.second = order_.begin();
    if (map_.size() > capacity_) {
      map_.erase(map_.find(order_.back()));
      order_.pop_back();
    }
    return entry;
  }

 private:
  // Lookups by string_view, without building a std::string per call.
  struct Hash {
    using is_transparent = void;
    size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
  };
  size_t capacity_;
  std::mutex mutex_;
  std::list<std::string> order_;  // most recent first
  std::unordered_map<std::string, std::pair<std::shared_ptr<const Entry>, std::list<std::string>::iterator>, Hash,
                     std::equal_to<>>
      map_;
};

// Host scratch for one call: buffers from a per-thread pool that grows and is reused, so
// that a call does not page in (or zero) fresh megabytes for its workspaces. Buffers go
// back to the pool when the Workspace is destroyed; Workspaces may nest.
class Workspace {
 public:
  Workspace() = default;
  ~Workspace();
  Workspace(const Workspace&) = delete;
  Workspace& operator=(const Workspace&) = delete;

  // bytes of uninitialised, 64-byte aligned memory, valid for this Workspace's lifetime.
  void* get(size_t bytes);
  template <class T> T* get(int64_t count) { return static_cast<T*>(get(size_t(count) * sizeof(T))); }

 private:
  std::vector<size_t> taken_;  // indices into the thread's pool
};

// Memory objects of one cached plan (a primitive and its reorders) for the calling
// thread, by slot: made on first use from the slot's descriptor, which a plan fixes;
// later calls only swap the data handle, and only when it changed. Creating a memory
// object, or even setting its handle, costs a noticeable share of a 64^3 matmul or of a
// small convolution.
class PlanMemories {
 public:
  // The slot's memory object, now pointing at data.
  const dnnl::memory& bind(int slot, const dnnl::memory::desc& desc, void* data);
  // A slot bound before, now pointing at data.
  void rebind(int slot, void* data) { handle(slot).point_at(data); }

  // A bound slot's memory object and current data, stable while the plan's memories live:
  // a replay repoints it without looking the slot up.
  struct Handle {
    dnnl::memory* memory = nullptr;
    void** current = nullptr;
    void point_at(void* data) const {
      if (*current == data) return;
      memory->set_data_handle(data);
      *current = data;
    }
  };
  Handle handle(int slot) { return {&memories_.at(slot), &handles_.at(slot)}; }
  // A slot bound before.
  const dnnl::memory& at(int slot) const { return memories_.at(slot); }
  // Every slot bound so far, by slot: a primitive's arguments when slots are DNNL_ARG_*.
  const std::unordered_map<int, dnnl::memory>& all() const { return memories_; }

 private:
  std::unordered_map<int, dnnl::memory> memories_;
  std::unordered_map<int, void*> handles_;
};

// The calling thread's memories for plan; dropped once the plan has left its cache (no
// shared_ptr to it is left), since its address may then be reused.
PlanMemories& thread_memories(const std::shared_ptr<const void>& plan);

// Runs a primitive on this thread's stream with anvil's CPU thread budget (one thread
// inside an enclosing parallel region) and waits for it.
// flops, when known (>= 0), lets a small call run on one thread.
void execute(const dnnl::primitive& primitive, const std::unordered_map<int, dnnl::memory>& args, int64_t flops = -1);

// The Status for a oneDNN error or an allocation failure while doing `what`.
Status error_status(const char* what, const dnnl::error& e);
Status out_of_memory_status(const char* what);

// Runs body (returning void or Status), turning a dnnl::error or an allocation failure
// into a Status that names what was being done ("matmul primitive descriptor: ...").
template <class Body> Status guarded(const char* what, Body&& body) {
  try {
    if constexpr (std::is_void_v<decltype(body())>) {
      body();
      return Status::Ok();
    } else {
      return body();
    }
  } catch (const dnnl::error& e) {
    return error_status(what, e);
  } catch (const std::bad_alloc&) {
    return out_of_memory_status(what);
  }
}

}  // namespace anvil::oneapi
