// The cuda attention kernels on tensor cores (flash_sm80, flash_sm90). The problem they take
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

// bf16/f16, head_dim == value_dim in {64, 128}, no user mask, scale > 0, q/k/v addressable by
// TMA (unit last stride, 16-byte aligned base and strides), compute capability 9.0:
// FlashAttention-3-class forward on wgmma + TMA (sm_90a), attention_cuda_sm90.cu.
Status flash_sm90_accepts(const Problem& p);
Status run_flash_sm90(const Problem& p);

}  // namespace anvil::cuda_attention
