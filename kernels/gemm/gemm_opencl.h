// The opencl GEMM's configuration (the -D parameters of gemm_opencl.cl) and the entry the
// tuner and the benchmark use to run it with a given configuration.
#pragma once

#include <string>
#include <vector>

#include "anvil/ops.h"
#include "backends/opencl/opencl_runtime.h"
#include "backends/opencl/opencl_tuning.h"

namespace anvil::opencl_gemm {

struct Config {
  int mwi = 8, nwi = 32, vw = 16, kwi = 2;  // register tile, vector width, k unroll
  int mdimc = 1, ndimc = 1;                 // work-group
  int kwg = 16, local = 0;                  // local-memory k slice (local == 1)

  opencl::Params params() const;
  static Status from_params(const opencl::Params& p, Config* out);  // every key required
  std::string str() const { return opencl::format_params(params()); }
  bool operator==(const Config&) const = default;
};

// Ok when `cfg` can run on the device (work-group size, local memory, vector width).
Status valid_for(const Config& cfg, const opencl::DeviceInfo& info);

// The configuration the kernels use on `device`: tuned entry, else the shipped default for
// its class, else the built-in Config{}; `origin` says which.
Config config_for(int device, std::string* origin = nullptr);

// Every configuration the tuner tries on `info` (valid ones only), in a fixed order.
std::vector<Config> search_space(const opencl::DeviceInfo& info);

// gemm(args) on the opencl backend with configuration `cfg` (args must be valid; the
// tuner and benchmark call this directly).
Status run_with_config(const GemmArgs& args, const Config& cfg);

// The program build options of (cfg, dtype), e.g. to time the program's compilation.
std::string build_options(const Config& cfg, DType dtype);

}  // namespace anvil::opencl_gemm
