// The registry: selection among kernel records, overrides, explain (internal to anvil).
//
// Each backend contributes one registration table (dispatch/tables/<backend>.cpp);
// the tables compiled into a build are listed by CMake in anvil_backend_tables.inc.
#pragma once

#include "dispatch/kernel_record.h"

namespace anvil::dispatch {

// The registry, built once on first use; immutable afterwards, so reads need no lock.
const KernelTables& tables();

// Optional reordering of the acceptable candidates for a call (autotune cache hook).
// Given the acceptable records in priority order, return the index to take, or -1 to
// keep priority order. Called only when no kernel is forced.
template <class Args>
using AutotuneHook = std::function<int(const Args&, const std::vector<const KernelRecord<Args>*>&)>;
template <class Args> void set_autotune_hook(AutotuneHook<Args> hook);

// Validate, select, run: the body of every public op entry.
template <class Args> Status run_op(const Args& args);
template <class Args> std::string explain_op(const Args& args);
template <class Args> Status select_op(const Args& args, const KernelRecord<Args>** chosen);

}  // namespace anvil::dispatch
