# Finds LibTorch inside the PyPI torch wheel of the Python interpreter in use and makes
# an imported target, anvil::torch_cpu. Sets Torch_FOUND.
#
# torch's own CMake config (find_package(Torch)) is not used: for CUDA wheels it probes
# the CUDA toolkit and GPU architectures, which fails or misleads on machines whose
# toolkit differs from the wheel's, and the extension needs only the CPU libraries.
set(Torch_FOUND FALSE)
find_package(Python3 COMPONENTS Interpreter QUIET)
if(Python3_Interpreter_FOUND)
  execute_process(
    COMMAND "${Python3_EXECUTABLE}" -c
            "import os, torch; print(os.path.dirname(torch.__file__)); print(int(torch._C._GLIBCXX_USE_CXX11_ABI)); print(torch.__version__); print(int(bool(torch.version.hip)))"
    OUTPUT_VARIABLE torch_info RESULT_VARIABLE torch_result ERROR_QUIET OUTPUT_STRIP_TRAILING_WHITESPACE)
  if(torch_result EQUAL 0)
    string(REPLACE "\n" ";" torch_info "${torch_info}")
    list(GET torch_info 0 ANVIL_TORCH_DIR)
    list(GET torch_info 1 ANVIL_TORCH_CXX11_ABI)
    list(GET torch_info 2 ANVIL_TORCH_VERSION)
    list(GET torch_info 3 ANVIL_TORCH_HIP)  # a ROCm build: its "cuda" tensors go to the hip backend
    find_library(ANVIL_TORCH_CPU_LIB torch_cpu PATHS "${ANVIL_TORCH_DIR}/lib" NO_DEFAULT_PATH)
    find_library(ANVIL_C10_LIB c10 PATHS "${ANVIL_TORCH_DIR}/lib" NO_DEFAULT_PATH)
    if(ANVIL_TORCH_CPU_LIB AND ANVIL_C10_LIB AND EXISTS "${ANVIL_TORCH_DIR}/include/torch/library.h")
      add_library(anvil_torch_cpu INTERFACE)
      add_library(anvil::torch_cpu ALIAS anvil_torch_cpu)
      target_include_directories(anvil_torch_cpu SYSTEM INTERFACE "${ANVIL_TORCH_DIR}/include"
                                 "${ANVIL_TORCH_DIR}/include/torch/csrc/api/include")
      target_link_libraries(anvil_torch_cpu INTERFACE "${ANVIL_TORCH_CPU_LIB}" "${ANVIL_C10_LIB}")
      target_compile_definitions(anvil_torch_cpu INTERFACE _GLIBCXX_USE_CXX11_ABI=${ANVIL_TORCH_CXX11_ABI}
                                 ANVIL_TORCH_HIP=${ANVIL_TORCH_HIP})
      set(Torch_FOUND TRUE)
      message(STATUS "anvil: torch ${ANVIL_TORCH_VERSION} at ${ANVIL_TORCH_DIR}")
    endif()
  endif()
endif()
