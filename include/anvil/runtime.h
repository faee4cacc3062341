// Process-wide runtime settings.
#pragma once

namespace anvil {

// Threads the cpu backend may use per call. 0 (the default) means the OpenMP default
// (OMP_NUM_THREADS or the core count). The torch extension sets this from
// torch.get_num_threads() on each call and uses 1 inside torch's own parallel regions.
void set_cpu_threads(int threads);
int cpu_threads();

}  // namespace anvil
