#pragma once
// Per-thread memory of recent kernel selections, so that a call repeated with identical
// arguments (the same buffers, shapes, strides and scalars: a training or inference loop,
// a benchmark) skips validation and the priority walk. Both are pure functions of the
// argument bytes and of the selection state (overrides, autotune hooks), so an entry is
// reused only when every byte of the arguments matches and the state's generation is the
// one it was made under. Only accepted calls are remembered; a refused call is validated
// again every time and reports its own error.
//
// Cost on a hit: one thread-local lookup and at most kEntries compares of the argument
// struct (about 0.5 KiB for GemmArgs), against ~0.45 us of validation and selection for a
// 64^3 GEMM on a 2-core Sapphire Rapids VM.
#include <array>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <type_traits>

namespace anvil::dispatch {

// Bumped by everything that can change a selection for the same arguments
// (set_overrides, set_autotune_hook). Starts at 1: an empty entry holds generation 0.
inline std::atomic<uint64_t>& selection_generation() {
  static std::atomic<uint64_t> generation{1};
  return generation;
}

template <class Args, class Kernel> class SelectionMemo {
  // Comparing bytes is exact only for plain data: no member may own memory elsewhere.
  static_assert(std::is_trivially_copyable_v<Args>, "argument structs must be plain data to be memoised");

 public:
  static constexpr size_t kEntries = 4;

  const Kernel* find(const Args& args, uint64_t generation) const {
    for (const Entry& e : entries_)
      if (e.generation == generation && std::memcmp(e.bytes, &args, sizeof(Args)) == 0) return e.kernel;
    return nullptr;
  }

  // Replaces the oldest entry.
  void remember(const Args& args, uint64_t generation, const Kernel* kernel) {
    Entry& e = entries_[next_];
    next_ = (next_ + 1) % kEntries;
    std::memcpy(e.bytes, &args, sizeof(Args));  // padding bytes too: a mismatch there only costs a miss
    e.generation = generation;
    e.kernel = kernel;
  }

 private:
  struct Entry {
    alignas(Args) unsigned char bytes[sizeof(Args)];
    uint64_t generation = 0;
    const Kernel* kernel = nullptr;
  };
  std::array<Entry, kEntries> entries_{};
  size_t next_ = 0;
};

}  // namespace anvil::dispatch
