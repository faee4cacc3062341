// The hip backend's SIMT attention, forward and backward: the shared GPU source
// (attention_gpu_simt.inc, also compiled by nvcc for the cuda backend) built by hipcc.
#include "kernels/attention/attention_gpu_simt.inc"
