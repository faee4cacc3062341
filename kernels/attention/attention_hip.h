// The hip attention forward on MFMA (flash_mfma). The problem it takes
// (gpu_attention::Problem), the SIMT kernels (forward and backward), the lowering and the
// records are shared with the cuda backend (attention_gpu.h, attention_gpu.inc,
// attention_gpu_simt.inc).
#pragma once

#include "anvil/status.h"
#include "kernels/attention/attention_gpu.h"

namespace anvil::hip_attention {

using gpu_attention::Operand;
using gpu_attention::Problem;

// bf16/f16, head_dim == value_dim in {64, 128}, unit last stride, no user mask:
// FlashAttention-2 order on v_mfma_f32_32x32x8 (gfx90a, gfx94x).
Status flash_mfma_accepts(const Problem& p);
Status run_flash_mfma(const Problem& p);

}  // namespace anvil::hip_attention
