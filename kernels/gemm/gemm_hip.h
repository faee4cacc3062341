// The hip GEMM mainloop on MFMA (matrix cores of CDNA2/CDNA3). The problem it takes
// (gpu_gemm::Problem), the SIMT kernel and the records are shared with the cuda backend
// (gemm_gpu.h, gemm_gpu.inc).
#pragma once

#include <string>

#include "anvil/status.h"
#include "kernels/gemm/gemm_gpu.h"

namespace anvil::hip_gemm {

using gpu_gemm::Matrix;
using gpu_gemm::Problem;

// Whether `gfx` (a device's processor, "gfx90a") has the MFMA instructions the hip kernels
// use (v_mfma_f32_32x32x8{bf16_1k,f16}): gfx90a and the gfx94x family; why not otherwise.
Status mfma_arch_supported(const std::string& gfx, const char* kernel);

// bf16/f16 on MFMA, f32 accumulation (gemm_hip_mfma.hip).
Status mfma_accepts(const Problem& p);
Status run_mfma(const Problem& p);

}  // namespace anvil::hip_gemm
