// The cuda backend's SIMT attention, forward and backward: the shared GPU source
// (attention_gpu_simt.inc, also compiled by hipcc for the hip backend) built by nvcc.
#include "kernels/attention/attention_gpu_simt.inc"
