// The cuda GEMM mainloops on tensor cores (sm_80 mma.sync, sm_90a wgmma). The problem they
// take (gpu_gemm::Problem), the SIMT kernel and the records are shared with the hip backend
// (gemm_gpu.h, gemm_gpu.inc). Each launcher has a `*_accepts` check that says why it cannot
// run a problem; the records turn those into can_implement reasons.
#pragma once

#include <cstdint>
#include <string>

#include "anvil/dtype.h"
#include "anvil/status.h"
#include "kernels/gemm/gemm_gpu.h"

namespace anvil::cuda_gemm {

using gpu_gemm::Matrix;
using gpu_gemm::Problem;

// bf16/f16 on tensor cores with mma.sync (sm_80 and newer).
Status sm80_accepts(const Problem& p);
Status run_sm80(const Problem& p);

// bf16/f16 with TMA + wgmma, warp-specialised and persistent (sm_90a only).
Status sm90_accepts(const Problem& p);
Status run_sm90(const Problem& p);

}  // namespace anvil::cuda_gemm
