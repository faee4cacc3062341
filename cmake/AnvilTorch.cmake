# Finds LibTorch from the PyPI torch wheel of the Python interpreter in use
# (torch.utils.cmake_prefix_path). Sets Torch_FOUND.
find_package(Python3 COMPONENTS Interpreter QUIET)
if(Python3_Interpreter_FOUND)
  execute_process(
    COMMAND "${Python3_EXECUTABLE}" -c "import torch, sys; sys.stdout.write(torch.utils.cmake_prefix_path)"
    OUTPUT_VARIABLE ANVIL_TORCH_PREFIX RESULT_VARIABLE torch_result ERROR_QUIET)
  if(torch_result EQUAL 0)
    list(APPEND CMAKE_PREFIX_PATH "${ANVIL_TORCH_PREFIX}")
    # The extension is CPU-side C++; it does not need the CUDA parts of torch's CMake
    # config, which would otherwise demand a CUDA toolkit matching the wheel's.
    find_package(Torch QUIET CONFIG)
    if(Torch_FOUND)
      find_library(ANVIL_TORCH_PYTHON_LIB torch_python PATHS "${TORCH_INSTALL_PREFIX}/lib" NO_DEFAULT_PATH)
    endif()
  endif()
endif()
