# The HIP toolchain and the hip backend's build (CMake's HIP language, clang -x hip).
#
# anvil_detect_hip() (before anvil_resolve_option(ANVIL_WITH_HIP ...)) leaves
# CMAKE_HIP_COMPILER set when a HIP compiler that can build for AMD GPUs is present:
#   - a ROCm install (/opt/rocm, or ROCM_PATH): check_language(HIP) finds its clang;
#   - Debian/Ubuntu packages (hipcc + libamdhip64-dev, ROCm 5.2 with clang-15): CMake 3.25
#     looks for hip-lang's package files at <root>/lib/cmake, where the packages do not put
#     them (lib/<multiarch>/cmake), and clang needs --rocm-path / --hip-device-lib-path. A
#     small ROCm root of symbolic links in the build tree and those flags make
#     enable_language(HIP) work unchanged.
# A ROCm build of torch (torch.version.hip) with ANVIL_WITH_TORCH not OFF turns an AUTO
# ANVIL_WITH_HIP into ON: its extension dispatches "cuda" tensors to the hip backend.
#
# anvil_add_hip_backend(<target>) (a macro: enable_language must run at directory scope)
# enables HIP for CMAKE_HIP_ARCHITECTURES (default gfx90a) and adds the runtime and
# kernels/*/*_hip*.hip to <target>.

function(anvil_prepend_env_prefix dir)
  if("$ENV{CMAKE_PREFIX_PATH}" STREQUAL "")
    set(ENV{CMAKE_PREFIX_PATH} "${dir}")
  else()
    set(ENV{CMAKE_PREFIX_PATH} "${dir}:$ENV{CMAKE_PREFIX_PATH}")
  endif()
endfunction()

macro(anvil_detect_hip)
  set(ANVIL_TORCH_IS_ROCM FALSE)
  if(NOT ANVIL_WITH_TORCH STREQUAL "OFF")
    find_package(Python3 COMPONENTS Interpreter QUIET)
    if(Python3_Interpreter_FOUND)
      execute_process(COMMAND "${Python3_EXECUTABLE}" -c "import torch; print(torch.version.hip or '')"
                      OUTPUT_VARIABLE anvil_torch_hip OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
      if(anvil_torch_hip)
        set(ANVIL_TORCH_IS_ROCM TRUE)
        if(ANVIL_WITH_HIP STREQUAL "AUTO")
          message(STATUS "anvil: torch is a ROCm build (HIP ${anvil_torch_hip}): the hip backend is required")
          set(ANVIL_WITH_HIP ON CACHE STRING "HIP backend" FORCE)
        endif()
      endif()
    endif()
  endif()

  if(NOT ANVIL_WITH_HIP STREQUAL "OFF" AND NOT CMAKE_HIP_COMPILER)
    find_program(ANVIL_HIPCONFIG hipconfig HINTS "$ENV{ROCM_PATH}/bin" /opt/rocm/bin)
    set(anvil_rocm_root "")
    if(ANVIL_HIPCONFIG)
      execute_process(COMMAND "${ANVIL_HIPCONFIG}" --rocmpath OUTPUT_VARIABLE anvil_rocm_root
                      OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
    endif()
    file(GLOB anvil_multiarch_hip_lang "${anvil_rocm_root}/lib/*/cmake/hip-lang/hip-lang-config.cmake")
    if(anvil_rocm_root AND NOT EXISTS "${anvil_rocm_root}/lib/cmake/hip-lang/hip-lang-config.cmake"
       AND anvil_multiarch_hip_lang)
      # The Debian layout.
      list(GET anvil_multiarch_hip_lang 0 anvil_hip_lang_config)
      get_filename_component(anvil_pkg_dir "${anvil_hip_lang_config}" DIRECTORY)
      get_filename_component(anvil_pkg_dir "${anvil_pkg_dir}" DIRECTORY)  # lib/<multiarch>/cmake
      get_filename_component(anvil_libdir "${anvil_pkg_dir}" DIRECTORY)   # lib/<multiarch>
      execute_process(COMMAND "${ANVIL_HIPCONFIG}" --hipclangpath OUTPUT_VARIABLE anvil_hip_clang_dir
                      OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
      # hipcc of these packages runs clang++-15 (the version the device libraries match).
      find_program(ANVIL_HIP_CLANG NAMES clang++-15 clang++ HINTS "${anvil_hip_clang_dir}" NO_DEFAULT_PATH)
      if(ANVIL_HIP_CLANG AND EXISTS "${anvil_libdir}/amdgcn/bitcode")
        set(anvil_shim "${CMAKE_BINARY_DIR}/anvil-rocm-root")
        file(MAKE_DIRECTORY "${anvil_shim}/lib/cmake")
        foreach(pkg hip-lang amd_comgr)
          if(EXISTS "${anvil_pkg_dir}/${pkg}" AND NOT EXISTS "${anvil_shim}/lib/cmake/${pkg}")
            file(CREATE_LINK "${anvil_pkg_dir}/${pkg}" "${anvil_shim}/lib/cmake/${pkg}" SYMBOLIC)
          endif()
        endforeach()
        set(CMAKE_HIP_COMPILER "${ANVIL_HIP_CLANG}" CACHE FILEPATH "HIP compiler (clang)")
        set(CMAKE_HIP_COMPILER_ROCM_ROOT "${anvil_shim}" CACHE PATH "ROCm root as CMake's HIP support sees it")
        set(CMAKE_HIP_FLAGS_INIT "--rocm-path=${anvil_rocm_root} --hip-device-lib-path=${anvil_libdir}/amdgcn/bitcode")
        # hip-lang's package looks up amd_comgr, also under lib/<multiarch>: the environment
        # variable (':'-separated) reaches CMake's compiler checks, a CMake variable does not.
        anvil_prepend_env_prefix("${anvil_shim}")
        message(STATUS "anvil: HIP from Debian-style packages: ${ANVIL_HIP_CLANG}, ROCm root ${anvil_rocm_root}")
      endif()
    else()
      check_language(HIP)
    endif()
  elseif(CMAKE_HIP_COMPILER_ROCM_ROOT MATCHES "anvil-rocm-root$")
    # A reconfigure of a Debian-layout build: the environment does not persist.
    anvil_prepend_env_prefix("${CMAKE_HIP_COMPILER_ROCM_ROOT}")
  endif()
endmacro()

macro(anvil_add_hip_backend target)
  # gfx90a: CDNA2 (MI200). This toolchain (clang 15, ROCm 5.2 device libraries) also builds
  # gfx908 and gfx940; gfx941/gfx942 (MI300) need a newer ROCm (see README).
  if(NOT DEFINED CMAKE_HIP_ARCHITECTURES)
    set(CMAKE_HIP_ARCHITECTURES "gfx90a")
  endif()
  set(CMAKE_HIP_STANDARD 20)
  set(CMAKE_HIP_STANDARD_REQUIRED ON)
  if(CCACHE_PROGRAM)
    set(CMAKE_HIP_COMPILER_LAUNCHER "${CCACHE_PROGRAM}")
  endif()
  enable_language(HIP)
  file(GLOB anvil_hip_kernels CONFIGURE_DEPENDS "${CMAKE_CURRENT_SOURCE_DIR}/kernels/*/*_hip*.hip")
  target_sources(${target} PRIVATE backends/hip/hip_runtime.cpp ${anvil_hip_kernels})
  # The host-compiled hip files include the HIP runtime API, which wants the platform macro;
  # ANVIL_HIP_ARCHITECTURES lets hip::available() say when the device is not one built for.
  string(REPLACE ";" "," anvil_hip_arch_list "${CMAKE_HIP_ARCHITECTURES}")
  set_property(SOURCE backends/hip/hip_runtime.cpp dispatch/tables/hip.cpp APPEND PROPERTY
               COMPILE_DEFINITIONS __HIP_PLATFORM_AMD__=1 ANVIL_HIP_ARCHITECTURES="${anvil_hip_arch_list}")
  # hip-lang's device target already passes what hipcc does (-mllvm -amdgpu-early-inline-all=true
  # -amdgpu-function-calls=false): device code is inlined, with no calls and no call stack in
  # scratch memory.
  if(NOT CMAKE_HIP_COMPILER_ROCM_ROOT MATCHES "anvil-rocm-root$")
    target_include_directories(${target} PRIVATE "${CMAKE_HIP_COMPILER_ROCM_ROOT}/include")
  endif()
  # The HIP runtime: hip-lang's target here, hip's package (hip::amdhip64) for users of the
  # installed anvil.
  target_link_libraries(${target} PUBLIC $<BUILD_INTERFACE:hip-lang::amdhip64> $<INSTALL_INTERFACE:hip::amdhip64>)
  string(APPEND ANVIL_CONFIG_DEPENDENCIES "find_dependency(hip CONFIG)\n")
endmacro()
