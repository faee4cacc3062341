#!/usr/bin/env bash
# Installs what anvil's build, tests and benchmark need, from Debian packages and PyPI
# only. Idempotent: installed packages are skipped. Run as root (or with sudo present).
set -euo pipefail

apt_packages=(cmake ninja-build ccache g++ pkg-config clang libclang-rt-dev libomp-dev
              libgtest-dev libgmock-dev libbenchmark-dev libopenblas-dev
              ocl-icd-opencl-dev opencl-headers pocl-opencl-icd
              hipcc libamdhip64-dev)  # the hip backend: HIP 5.2 / clang-15, compiles for gfx90a (no GPU needed)
pip_packages=(torch numpy pytest scikit-build-core matplotlib expecttest)
# oneDNN v3 for the oneapi backend: the PyPI CPU build with GNU OpenMP (the README says why
# this one). Pinned: newer PyPI oneDNN wheels are SYCL builds that need Intel's runtimes.
onednn_package=onednn-devel-cpu-gomp
onednn_version=2023.2.0

missing=()
command -v python3 >/dev/null || missing+=(python3 python3-pip python3-dev)
for p in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "install-deps: apt-get install ${missing[*]}"
  sudo_cmd=""
  [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

python3=${PYTHON:-python3}
pip_missing=()
command -v python3 >/dev/null || missing+=(python3 python3-pip python3-dev)
for p in "${pip_packages[@]}"; do
  "$python3" -m pip show -q "$p" >/dev/null 2>&1 || pip_missing+=("$p")
done
"$python3" -m pip show -q "$onednn_package" >/dev/null 2>&1 || pip_missing+=("$onednn_package==$onednn_version")
# The cuda backend's SASS check needs cuobjdump; CUDA toolkits without it (as here) get it
# from PyPI. Any 13.x reads the cubins nvcc 13.0 writes; pinned to the one tested. Its
# -sass runs nvdisasm from its own directory ("Could not find executable file 'nvdisasm'"
# without it), which PyPI ships separately.
nvcc_bin=$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)
if [ -x "$nvcc_bin" ] && [ ! -x "$(dirname "$nvcc_bin")/cuobjdump" ]; then
  for p in nvidia-cuda-cuobjdump nvidia-cuda-nvdisasm; do
    "$python3" -m pip show -q "$p" >/dev/null 2>&1 || pip_missing+=("$p==13.5.37")
  done
fi
if ((${#pip_missing[@]})); then
  echo "install-deps: pip install ${pip_missing[*]}"
  "$python3" -m pip install -q "${pip_missing[@]}"
fi
echo "install-deps: all dependencies present"
