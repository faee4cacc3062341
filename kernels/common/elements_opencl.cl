// Element access shared by every anvil OpenCL program: spliced into each at build time
// by cmake/AnvilEmbedOpenCL.cmake where a program includes this file by name.
// DTYPE (a -D define): 0 f32, 1 f16 (vload_half: every device), 2 bf16 (ushort, f32 math).
#if DTYPE == 0
typedef float elem_t;
inline float load_elem(const __global elem_t* p, long i) { return p[i]; }
inline void store_elem(__global elem_t* p, long i, float v) { p[i] = v; }
#elif DTYPE == 1
typedef half elem_t;
inline float load_elem(const __global elem_t* p, long i) { return vload_half(i, p); }
inline void store_elem(__global elem_t* p, long i, float v) { vstore_half_rte(v, i, p); }
#else
typedef ushort elem_t;
inline float load_elem(const __global elem_t* p, long i) { return as_float(((uint)p[i]) << 16); }
// Round to nearest even; NaN stays NaN (quiet bit set), as anvil::to_bfloat16.
inline void store_elem(__global elem_t* p, long i, float v) {
  uint u = as_uint(v);
  if ((u & 0x7fffffffu) > 0x7f800000u) {
    p[i] = (ushort)((u >> 16) | 0x0040u);
    return;
  }
  u += 0x7fffu + ((u >> 16) & 1u);
  p[i] = (ushort)(u >> 16);
}
#endif
