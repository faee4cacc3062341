// Kernel parameters per OpenCL device: a database of defaults shipped with the library
// (backends/opencl/opencl_tuning_defaults.txt, embedded at build time, keyed by vendor,
// device type and name), overridden by tuned entries that the tuner (anvil-opencl-tune)
// writes to a per-device file in the user's cache folder:
//   <ANVIL_OPENCL_CACHE_DIR or ~/.cache/anvil/opencl>/tuning/<hash of the device key>.txt
// The tuned file records the device key it was made for; a file for another device or
// driver, one that is not owned by the user or is group/world writable, or a line that
// does not parse, is ignored (never half-applied). ANVIL_OPENCL_TUNING=0 ignores tuned
// files (shipped defaults only).
//
// Format of both files, one entry per line ('#' starts a comment):
//   defaults:  <family> [vendor=<substring>] [type=cpu|gpu|accelerator] [name=<substring>]
//              [vector=<CL_DEVICE_PREFERRED_VECTOR_WIDTH_FLOAT>] : K=V K=V ...
//   tuned:     <family> : K=V K=V ...
// Substrings match case-insensitively; '_' in a match value stands for a space. Among
// the default lines of a family that match a device, the one with the most conditions wins.
#pragma once

#include <map>
#include <string>
#include <string_view>

#include "backends/opencl/opencl_runtime.h"

namespace anvil::opencl {

using Params = std::map<std::string, int64_t>;

// "K=V K=V" in key order; and back (an error naming the token that does not parse).
std::string format_params(const Params& params);
Status parse_params(std::string_view text, Params* out);

struct ParamsLookup {
  Params params;       // empty when nothing matched
  std::string origin;  // "tuned (<file>)", "default (<line>)" or "none"
};
// The parameters of `family` ("gemm") for `device`.
ParamsLookup lookup_params(int device, const std::string& family);

// Records a tuned entry for `device` (replacing the family's previous one) with an atomic
// rewrite of its file. `note` goes into a comment (what was measured).
Status store_params(int device, const std::string& family, const Params& params, const std::string& note);

// The tuned database file of `device` ("" when the cache folder is unusable).
std::string tuning_file(int device);

}  // namespace anvil::opencl
