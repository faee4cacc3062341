// Selection: for a call, walk the op's records in priority order and take the first whose
// dtype matches, whose backend runs on the operands' device and is available, and whose
// can_implement accepts the call. Overrides narrow the walk; they never widen it.
#include "dispatch/registry.h"
#include "dispatch/selection_memo.h"

#include <algorithm>
#include <array>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <shared_mutex>
#include <sstream>

#include "kernels/attention/attention_desc.h"
#include "kernels/conv2d/conv2d_desc.h"
#include "kernels/gemm/gemm_desc.h"

namespace anvil::dispatch {

#define ANVIL_BACKEND_TABLE(name) void register_##name(KernelTables& tables);
#include "anvil_backend_tables.inc"
#undef ANVIL_BACKEND_TABLE

namespace {

// ------------------------------------------------------------------ op traits
template <class Args> struct OpTraits;
template <> struct OpTraits<GemmArgs> {
  static constexpr Op op = Op::gemm;
  static const TensorRef& lead(const GemmArgs& a) { return a.a; }
  static Status validate(const GemmArgs& a) { return gemm_desc::validate(a); }
  static std::string describe(const GemmArgs& a) { return gemm_desc::describe(a); }
};
template <> struct OpTraits<GemmBackwardArgs> {
  static constexpr Op op = Op::gemm_backward;
  static const TensorRef& lead(const GemmBackwardArgs& a) { return a.a; }
  static Status validate(const GemmBackwardArgs& a) { return gemm_desc::validate(a); }
  static std::string describe(const GemmBackwardArgs& a) { return gemm_desc::describe(a); }
};
template <> struct OpTraits<Conv2dArgs> {
  static constexpr Op op = Op::conv2d;
  static const TensorRef& lead(const Conv2dArgs& a) { return a.input; }
  static Status validate(const Conv2dArgs& a) { return conv2d_desc::validate(a); }
  static std::string describe(const Conv2dArgs& a) { return conv2d_desc::describe(a); }
};
template <> struct OpTraits<Conv2dBackwardArgs> {
  static constexpr Op op = Op::conv2d_backward;
  static const TensorRef& lead(const Conv2dBackwardArgs& a) { return a.input; }
  static Status validate(const Conv2dBackwardArgs& a) { return conv2d_desc::validate(a); }
  static std::string describe(const Conv2dBackwardArgs& a) { return conv2d_desc::describe(a); }
};
template <> struct OpTraits<AttentionArgs> {
  static constexpr Op op = Op::attention;
  static const TensorRef& lead(const AttentionArgs& a) { return a.q; }
  static Status validate(const AttentionArgs& a) { return attention_desc::validate(a); }
  static std::string describe(const AttentionArgs& a) { return attention_desc::describe(a); }
};
template <> struct OpTraits<AttentionBackwardArgs> {
  static constexpr Op op = Op::attention_backward;
  static const TensorRef& lead(const AttentionBackwardArgs& a) { return a.q; }
  static Status validate(const AttentionBackwardArgs& a) { return attention_desc::validate(a); }
  static std::string describe(const AttentionBackwardArgs& a) { return attention_desc::describe(a); }
};

// ------------------------------------------------------------------ tables
constexpr size_t kMaxRecordsPerDtype = 32;  // per op; checked when the tables are built

struct Registry {
  KernelTables tables;
  // Availability of each backend, probed once on first need (probing may start a runtime).
  std::vector<std::once_flag> probed;
  std::vector<Status> availability;

  Registry() {
#define ANVIL_BACKEND_TABLE(name) register_##name(tables);
#include "anvil_backend_tables.inc"
#undef ANVIL_BACKEND_TABLE
    sort_by_priority(tables.table<GemmArgs>());
    sort_by_priority(tables.table<GemmBackwardArgs>());
    sort_by_priority(tables.table<Conv2dArgs>());
    sort_by_priority(tables.table<Conv2dBackwardArgs>());
    sort_by_priority(tables.table<AttentionArgs>());
    sort_by_priority(tables.table<AttentionBackwardArgs>());
    probed = std::vector<std::once_flag>(tables.backends().size());
    availability.resize(tables.backends().size());
  }

  template <class Record> static void sort_by_priority(std::vector<Record>& records) {
    std::stable_sort(records.begin(), records.end(),
                     [](const Record& x, const Record& y) { return x.priority > y.priority; });
    // Selection ranks the records of one dtype in a fixed-size buffer (Ranked, below).
    std::map<DType, size_t> per_dtype;
    for (const Record& r : records)
      if (++per_dtype[r.dtype] > kMaxRecordsPerDtype) {
        std::fprintf(stderr, "anvil: more than %zu kernels registered for %s\n", kMaxRecordsPerDtype, r.name.c_str());
        std::abort();
      }
  }

  // Index of the backend named `name`, or -1.
  int backend_index(const std::string& name) const {
    const auto& b = tables.backends();
    for (size_t i = 0; i < b.size(); ++i)
      if (b[i].name == name) return int(i);
    return -1;
  }

  const Status& available(int index) {
    std::call_once(probed[size_t(index)], [&] {
      const auto& probe = tables.backends()[size_t(index)].available;
      availability[size_t(index)] = probe ? probe() : Status::Ok();
    });
    return availability[size_t(index)];
  }

  bool has_kernel(const std::string& name) const {
    bool found = false;
    auto scan = [&](const auto& table) {
      for (const auto& r : table) found = found || r.name == name;
    };
    scan(tables.table<GemmArgs>());
    scan(tables.table<GemmBackwardArgs>());
    scan(tables.table<Conv2dArgs>());
    scan(tables.table<Conv2dBackwardArgs>());
    scan(tables.table<AttentionArgs>());
    scan(tables.table<AttentionBackwardArgs>());
    return found;
  }
};

Registry& registry() {
  static Registry instance;
  return instance;
}

// ------------------------------------------------------------------ overrides
struct ParsedOverrides {
  std::string backend;
  std::vector<std::string> kernels;
};

std::vector<std::string> split_commas(const std::string& list) {
  std::vector<std::string> out;
  std::stringstream in(list);
  std::string item;
  while (std::getline(in, item, ',')) {
    const auto first = item.find_first_not_of(" \t"), last = item.find_last_not_of(" \t");
    if (first != std::string::npos) out.push_back(item.substr(first, last - first + 1));
  }
  return out;
}

std::string valid_backend_names() {
  std::string names;
  for (const auto& b : registry().tables.backends()) names += (names.empty() ? "" : ", ") + b.name;
  return names;
}

// The op and dtype parts of a kernel name ("gemm.f32" of "gemm.f32.cpu.avx512").
std::string op_dtype_prefix(const std::string& kernel) {
  const auto first = kernel.find('.');
  const auto second = first == std::string::npos ? first : kernel.find('.', first + 1);
  return kernel.substr(0, second);
}

Status parse_overrides(const Overrides& raw, const char* backend_source, const char* kernel_source,
                       ParsedOverrides* parsed) {
  Registry& reg = registry();
  if (!raw.backend.empty() && reg.backend_index(raw.backend) < 0)
    return {StatusCode::not_found, std::string(backend_source) + ": unknown backend '" + raw.backend +
                                       "'; valid backends in this build: " + valid_backend_names()};
  parsed->backend = raw.backend;
  parsed->kernels = split_commas(raw.kernels);
  std::set<std::string> seen;
  for (const std::string& name : parsed->kernels) {
    if (!reg.has_kernel(name)) {
      std::string valid;
      for (const KernelInfo& k : kernels()) valid += (valid.empty() ? "" : ", ") + k.name;
      return {StatusCode::not_found, std::string(kernel_source) + ": unknown kernel '" + name +
                                         "'; valid kernels in this build: " + valid};
    }
    if (!seen.insert(op_dtype_prefix(name)).second)
      return invalid_argument(std::string(kernel_source) + ": more than one kernel forced for " +
                              op_dtype_prefix(name));
  }
  return Status::Ok();
}

struct OverrideState {
  std::shared_mutex mutex;
  Overrides api;  // set through set_overrides
  ParsedOverrides api_parsed;
  std::once_flag env_once;
  Status env_status;
  ParsedOverrides env;
  // API fields over environment fields, rebuilt after set_overrides: every call reads it,
  // so it is shared rather than copied.
  std::shared_ptr<const ParsedOverrides> effective;
};

OverrideState& override_state() {
  static OverrideState state;
  return state;
}

const char* env_or_empty(const char* name) {
  const char* value = std::getenv(name);
  return value ? value : "";
}

Status effective_overrides(std::shared_ptr<const ParsedOverrides>* out) {
  OverrideState& st = override_state();
  std::call_once(st.env_once, [&] {
    st.env_status = parse_overrides({env_or_empty("ANVIL_BACKEND"), env_or_empty("ANVIL_KERNEL")}, "ANVIL_BACKEND",
                                    "ANVIL_KERNEL", &st.env);
  });
  if (!st.env_status.ok()) return st.env_status;
  {
    std::shared_lock lock(st.mutex);
    if (st.effective) {
      *out = st.effective;
      return Status::Ok();
    }
  }
  std::unique_lock lock(st.mutex);
  if (!st.effective) {
    auto merged = std::make_shared<ParsedOverrides>();
    merged->backend = st.api_parsed.backend.empty() ? st.env.backend : st.api_parsed.backend;
    merged->kernels = st.api_parsed.kernels.empty() ? st.env.kernels : st.api_parsed.kernels;
    st.effective = std::move(merged);
  }
  *out = st.effective;
  return Status::Ok();
}

// ------------------------------------------------------------------ selection
template <class Args> struct Candidate {
  const KernelRecord<Args>* record;
  Status verdict;  // Ok = acceptable
  int priority;    // for this call (a record may measure its own per shape class)
};

// The records of a table for one dtype, by their priority for this call (stable: equal
// priorities keep table order). Held inline: tables have a few records per dtype.
template <class Args> class Ranked {
 public:
  Ranked(const std::vector<KernelRecord<Args>>& table, DType dtype, const Args& args) {
    for (const auto& r : table) {
      if (r.dtype != dtype) continue;
      items_[size_++] = {r.priority_of(args), &r};
    }
    // Insertion sort: stable, and unlike std::stable_sort it allocates no buffer.
    for (size_t i = 1; i < size_; ++i)
      for (size_t j = i; j > 0 && items_[j - 1].priority < items_[j].priority; --j) std::swap(items_[j - 1], items_[j]);
  }
  struct Item {
    int priority;
    const KernelRecord<Args>* record;
  };
  const Item* begin() const { return items_.data(); }
  const Item* end() const { return items_.data() + size_; }

 private:
  std::array<Item, kMaxRecordsPerDtype> items_{};
  size_t size_ = 0;
};

template <class Args> Status judge(const KernelRecord<Args>& r, const Args& args, DType dtype, Device device) {
  Registry& reg = registry();
  if (r.dtype != dtype)
    return unsupported(std::string("dtype ") + dtype_name(dtype) + " is not " + dtype_name(r.dtype));
  const int b = reg.backend_index(r.backend);
  const BackendRecord& backend = reg.tables.backends()[size_t(b)];
  if (std::find(backend.device_types.begin(), backend.device_types.end(), device.type) ==
      backend.device_types.end())
    return unsupported(std::string("backend ") + r.backend + " does not run on " +
                       device_type_name(device.type) + " memory");
  const Status& available = reg.available(b);
  if (!available.ok()) return unsupported("backend " + r.backend + " unavailable: " + available.message());
  return r.can_implement ? r.can_implement(args) : Status::Ok();
}

template <class Args> struct Selection {
  std::vector<Candidate<Args>> candidates;  // this op and dtype, in priority order
  const KernelRecord<Args>* chosen = nullptr;
  Status status;
  std::string forced_note;  // what the overrides did, for explain
  bool hooked = false;      // an autotune hook chose: it may choose differently next time
};

template <class Args> AutotuneHook<Args>& autotune_hook() {
  static AutotuneHook<Args> hook;
  return hook;
}
std::shared_mutex& hook_mutex() {
  static std::shared_mutex m;
  return m;
}

// exhaustive: judge every candidate (explain); otherwise stop at the first acceptable one
// unless an autotune hook wants to see them all.
template <class Args> Selection<Args> select(const Args& args, bool exhaustive) {
  Selection<Args> sel;
  sel.candidates.reserve(8);
  const TensorRef& lead = OpTraits<Args>::lead(args);
  const DType dtype = lead.dtype;
  const Device device = lead.device;
  const Op op = OpTraits<Args>::op;
  const std::string prefix = std::string(op_name(op)) + "." + dtype_name(dtype);

  std::shared_ptr<const ParsedOverrides> overrides;
  sel.status = effective_overrides(&overrides);
  if (!sel.status.ok()) return sel;
  const ParsedOverrides& ov = *overrides;

  const auto& table = registry().tables.table<Args>();
  const std::string* forced = nullptr;
  for (const std::string& name : ov.kernels)
    if (name.size() > prefix.size() && name[prefix.size()] == '.' && name.compare(0, prefix.size(), prefix) == 0)
      forced = &name;
  static const std::string kNone;
  const std::string& forced_kernel = forced ? *forced : kNone;

  bool hooked;
  {
    std::shared_lock lock(hook_mutex());
    hooked = bool(autotune_hook<Args>());
  }
  sel.hooked = hooked;
  const bool stop_at_first = !exhaustive && !hooked && forced_kernel.empty();
  for (const auto& [priority, record] : Ranked<Args>(table, dtype, args)) {
    const KernelRecord<Args>& r = *record;
    if (!ov.backend.empty() && forced_kernel.empty() && r.backend != ov.backend && !exhaustive) continue;
    if (!forced_kernel.empty() && r.name != forced_kernel && !exhaustive) continue;  // only the forced one matters
    Candidate<Args> c{&r, judge(r, args, dtype, device), priority};
    if (c.verdict.ok() && !forced_kernel.empty() && r.name != forced_kernel)
      c.verdict = unsupported("not the forced kernel " + forced_kernel);
    else if (c.verdict.ok() && forced_kernel.empty() && !ov.backend.empty() && r.backend != ov.backend)
      c.verdict = unsupported("not the forced backend " + ov.backend);
    const bool accepted = c.verdict.ok();
    sel.candidates.push_back(std::move(c));
    if (accepted && stop_at_first) {
      sel.chosen = &r;
      return sel;
    }
  }

  if (!forced_kernel.empty()) {
    if (exhaustive) sel.forced_note = "forced kernel " + forced_kernel;
    for (const auto& c : sel.candidates)
      if (c.record->name == forced_kernel) {
        if (c.verdict.ok()) sel.chosen = c.record;
        else
          sel.status = unsupported("forced kernel " + forced_kernel + " refuses this call: " + c.verdict.message());
      }
    return sel;
  }
  if (!ov.backend.empty()) sel.forced_note = "forced backend " + ov.backend;

  std::vector<const KernelRecord<Args>*> acceptable;
  for (const auto& c : sel.candidates)
    if (c.verdict.ok()) acceptable.push_back(c.record);
  if (acceptable.empty()) {
    std::string reasons;
    for (const auto& c : sel.candidates) reasons += "; " + c.record->name + ": " + c.verdict.message();
    if (sel.candidates.empty()) reasons = "; no kernel is registered for " + prefix;
    sel.status = unsupported("no kernel can run this call" +
                             (ov.backend.empty() ? std::string() : " on forced backend " + ov.backend) + reasons);
    return sel;
  }
  int pick = -1;
  {
    std::shared_lock lock(hook_mutex());
    if (autotune_hook<Args>()) pick = autotune_hook<Args>()(args, acceptable);
  }
  sel.chosen = acceptable[pick >= 0 && size_t(pick) < acceptable.size() ? size_t(pick) : 0];
  return sel;
}

bool logging_enabled() {
  static const bool enabled = [] {
    const char* v = std::getenv("ANVIL_LOG");
    return v && *v && std::string(v) != "0";
  }();
  return enabled;
}

void log_selection_once(const std::string& kernel, const std::string& call) {
  static std::mutex mutex;
  static std::set<std::string> seen;
  std::lock_guard lock(mutex);
  if (seen.size() > 100000 || !seen.insert(kernel + " " + call).second) return;
  std::fprintf(stderr, "anvil: %s <- %s\n", kernel.c_str(), call.c_str());
}

}  // namespace

const KernelTables& tables() { return registry().tables; }

template <class Args> void set_autotune_hook(AutotuneHook<Args> hook) {
  std::unique_lock lock(hook_mutex());
  autotune_hook<Args>() = std::move(hook);
  selection_generation().fetch_add(1, std::memory_order_release);
}

template <class Args> Status select_op(const Args& args, const KernelRecord<Args>** chosen) {
  thread_local SelectionMemo<Args, KernelRecord<Args>> memo;
  const uint64_t generation = selection_generation().load(std::memory_order_acquire);
  if (const KernelRecord<Args>* known = memo.find(args, generation)) {
    *chosen = known;
    return Status::Ok();
  }
  const auto context = [] { return std::string(op_name(OpTraits<Args>::op)) + ": "; };  // built on failure only
  const Status valid = OpTraits<Args>::validate(args);
  if (!valid.ok()) return valid.with_context(context());
  Selection<Args> sel = select(args, false);
  if (!sel.status.ok()) return sel.status.with_context(context());
  if (!sel.hooked) memo.remember(args, generation, sel.chosen);
  *chosen = sel.chosen;
  return Status::Ok();
}

template <class Args> Status run_op(const Args& args) {
  const KernelRecord<Args>* kernel = nullptr;
  ANVIL_RETURN_IF_ERROR(select_op(args, &kernel));
  if (logging_enabled()) log_selection_once(kernel->name, OpTraits<Args>::describe(args));
  const Status status = kernel->run(args);
  if (status.ok()) return status;  // the context strings are built on failure only
  return status.with_context(kernel->name + " failed on " + OpTraits<Args>::describe(args) + ": ");
}

template <class Args> std::string explain_op(const Args& args) {
  const TensorRef& lead = OpTraits<Args>::lead(args);
  std::ostringstream out;
  out << op_name(OpTraits<Args>::op) << " " << dtype_name(lead.dtype) << " on "
      << device_type_name(lead.device.type) << ":" << lead.device.index << "\n  call: "
      << OpTraits<Args>::describe(args) << "\n";
  const Status valid = OpTraits<Args>::validate(args);
  if (!valid.ok()) {
    out << "  invalid call, no kernel considered: " << valid.message() << "\n";
    return out.str();
  }
  Selection<Args> sel = select(args, true);
  out << "  overrides: " << (sel.forced_note.empty() ? "none" : sel.forced_note) << "\n";
  size_t width = 0;
  for (const auto& c : sel.candidates) width = std::max(width, c.record->name.size());
  for (const auto& c : sel.candidates) {
    const char* mark = c.record == sel.chosen ? "taken   " : c.verdict.ok() ? "passed  " : "refused ";
    out << "  " << mark << c.record->name << std::string(width - c.record->name.size(), ' ')
        << "  [" << c.record->backend << ", priority " << c.priority
        << (c.record->priority_for ? " for this shape" : "") << "]";
    if (c.record == sel.chosen) out << "\n";
    else if (c.verdict.ok()) out << ": acceptable, but an earlier candidate was taken\n";
    else out << ": " << c.verdict.message() << "\n";
  }
  if (!sel.status.ok()) out << "  error: " << sel.status.message() << "\n";
  return out.str();
}

#define ANVIL_INSTANTIATE(Args)                                                  \
  template void set_autotune_hook<Args>(AutotuneHook<Args>);                     \
  template Status select_op<Args>(const Args&, const KernelRecord<Args>**);      \
  template Status run_op<Args>(const Args&);                                     \
  template std::string explain_op<Args>(const Args&);
ANVIL_INSTANTIATE(GemmArgs)
ANVIL_INSTANTIATE(GemmBackwardArgs)
ANVIL_INSTANTIATE(Conv2dArgs)
ANVIL_INSTANTIATE(Conv2dBackwardArgs)
ANVIL_INSTANTIATE(AttentionArgs)
ANVIL_INSTANTIATE(AttentionBackwardArgs)
#undef ANVIL_INSTANTIATE

}  // namespace anvil::dispatch

// ------------------------------------------------------------------ public registry API
namespace anvil {

const char* op_name(Op op) {
  switch (op) {
    case Op::gemm: return "gemm";
    case Op::gemm_backward: return "gemm_backward";
    case Op::conv2d: return "conv2d";
    case Op::conv2d_backward: return "conv2d_backward";
    case Op::attention: return "attention";
    case Op::attention_backward: return "attention_backward";
  }
  return "?";
}

std::vector<KernelInfo> kernels() {
  std::vector<KernelInfo> out;
  const auto& t = dispatch::tables();
  auto add = [&](Op op, const auto& table) {
    for (const auto& r : table) {
      const Status here = r.runs_here ? r.runs_here() : Status::Ok();
      out.push_back({r.name, op, r.backend, r.dtype, r.priority, here.ok(), here.ok() ? "" : here.message()});
    }
  };
  add(Op::gemm, t.table<GemmArgs>());
  add(Op::gemm_backward, t.table<GemmBackwardArgs>());
  add(Op::conv2d, t.table<Conv2dArgs>());
  add(Op::conv2d_backward, t.table<Conv2dBackwardArgs>());
  add(Op::attention, t.table<AttentionArgs>());
  add(Op::attention_backward, t.table<AttentionBackwardArgs>());
  return out;
}

std::vector<BackendInfo> backends() {
  std::vector<BackendInfo> out;
  auto& reg = dispatch::registry();
  for (size_t i = 0; i < reg.tables.backends().size(); ++i) {
    const Status& s = reg.available(int(i));
    const dispatch::BackendRecord& b = reg.tables.backends()[i];
    out.push_back({b.name, s.ok(), s.ok() && b.describe ? b.describe() : s.message(), b.device_types});
  }
  return out;
}

Status set_overrides(const Overrides& overrides) {
  dispatch::ParsedOverrides parsed;
  ANVIL_RETURN_IF_ERROR(dispatch::parse_overrides(overrides, "backend override", "kernel override", &parsed));
  auto& st = dispatch::override_state();
  std::unique_lock lock(st.mutex);
  st.api = overrides;
  st.api_parsed = std::move(parsed);
  st.effective.reset();
  dispatch::selection_generation().fetch_add(1, std::memory_order_release);
  return Status::Ok();
}

Overrides current_overrides() {
  auto& st = dispatch::override_state();
  std::shared_lock lock(st.mutex);
  return st.api;
}

ScopedOverrides::ScopedOverrides(const Overrides& overrides)
    : previous_(current_overrides()), status_(set_overrides(overrides)) {}

ScopedOverrides::~ScopedOverrides() { (void)set_overrides(previous_); }

}  // namespace anvil
