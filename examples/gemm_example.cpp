// A C++ user of the installed anvil package: a GEMM, its kernel choice, and an error.
#include <anvil/anvil.h>

#include <cstdio>
#include <vector>

int main() {
  const int64_t m = 4, n = 3, k = 2;
  std::vector<float> a = {1, 2, 3, 4, 5, 6, 7, 8}, b = {1, 0, 2, 0, 1, 3}, c(size_t(m * n));
  const anvil::GemmArgs args = anvil::gemm_args_row_major(anvil::DType::f32, anvil::Transpose::no, anvil::Transpose::no,
                                                          m, n, k, 1.0, a.data(), k, b.data(), n, 0.0, c.data(), n);
  if (const anvil::Status s = anvil::gemm(args); !s.ok()) {
    std::fprintf(stderr, "gemm failed: %s\n", s.message().c_str());
    return 1;
  }
  const std::vector<float> expected = {1, 2, 8, 3, 4, 18, 5, 6, 28, 7, 8, 38};
  if (c != expected) {
    std::fprintf(stderr, "wrong result\n");
    return 1;
  }
  std::printf("anvil %s: C = A @ B is correct\n%s", ANVIL_VERSION_STRING, anvil::explain(args).c_str());

  anvil::GemmArgs bad = args;
  bad.b.shape[0] = 5;  // K mismatch
  const anvil::Status s = anvil::gemm(bad);
  std::printf("bad call rejected: %s\n", s.message().c_str());
  return s.ok() ? 1 : 0;
}
