// The cuda attention kernel on tensor cores (flash_sm80). The problem it takes
// (gpu_attention::Problem), the SIMT kernels, the lowering and the records are shared with
// the hip backend (attention_gpu.h, attention_gpu.inc, attention_gpu_simt.inc).
#pragma once

#include "anvil/status.h"
#include "kernels/attention/attention_gpu.h"

namespace anvil::cuda_attention {

using gpu_attention::BackwardProblem;
using gpu_attention::Operand;
using gpu_attention::Problem;

// bf16/f16, head_dim == value_dim in {64, 128}, unit last stride, no user mask:
// FlashAttention-2 on mma.sync (sm_80 and newer).
Status flash_sm80_accepts(const Problem& p);
Status run_flash_sm80(const Problem& p);

}  // namespace anvil::cuda_attention
