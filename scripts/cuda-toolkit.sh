#!/usr/bin/env bash
# Installs NVIDIA's CUDA compiler and libraries from their PyPI wheels, once, into a cache
# outside the repository, and prints the environment that builds sahara with `--features cuda`
# on a machine without a GPU or a system CUDA toolkit:
#
#   eval "$(scripts/cuda-toolkit.sh)"                # CUDA 13.0, compute capability 9.0 (H100/H200)
#   eval "$(scripts/cuda-toolkit.sh 12.8 80)"        # CUDA 12 drivers, A100 (compute_80)
#
# Arguments: CUDA version (major.minor, default 13.0) and compute capability (default 90).
# The version must not be newer than the CUDA version of the driver that will run the binary
# (`nvidia-smi` prints it): code from a newer nvcc does not load on an older driver. Every wheel
# is pinned to that minor version; PyPI also serves newer ones.
# SAHARA_CACHE (default ~/.cache/sahara) chooses the cache folder.
set -euo pipefail

version=${1:-13.0}
cap=${2:-90}
major=${version%%.*}
case "$version" in
    [0-9]*.[0-9]*) ;;
    *) echo "cuda-toolkit.sh: CUDA version $version is not MAJOR.MINOR (e.g. 13.0)" >&2; exit 2 ;;
esac
case "$cap" in
    [0-9][0-9]|[0-9][0-9][0-9]) ;;
    *) echo "cuda-toolkit.sh: compute capability $cap is not a number such as 90 or 80" >&2; exit 2 ;;
esac

root=${SAHARA_CACHE:-$HOME/.cache/sahara}/cuda-$version
# cuRAND has its own version numbers: 10.4.0 ships with CUDA 13.0, 10.3.x with CUDA 12.
case "$version" in
    13.0) curand="nvidia-curand==10.4.0.*" ;;
    12.*) curand="nvidia-curand-cu12" ;;
    *) curand="nvidia-curand" ;;
esac
if [ "$major" -ge 13 ]; then
    suffix=""
else
    suffix="-cu$major"
fi
wheels=(
    "nvidia-cuda-nvcc$suffix==$version.*"
    "nvidia-cuda-runtime$suffix==$version.*"
    "nvidia-cuda-cccl$suffix==$version.*"
    "nvidia-cuda-nvrtc$suffix==$version.*"
    "nvidia-cublas$suffix==$version.*"
    "$curand"
)
if [ "$major" -ge 13 ]; then
    # CUDA 13 split nvcc's front end (cicc) and its headers into wheels of their own.
    wheels+=("nvidia-nvvm==$version.*" "nvidia-cuda-crt==$version.*")
fi

if [ ! -f "$root/.complete" ]; then
    echo "cuda-toolkit.sh: installing CUDA $version wheels into $root" >&2
    rm -rf "$root"
    python3 -m pip install --quiet --no-deps --target "$root/wheels" "${wheels[@]}" >&2
    touch "$root/.complete"
fi

# The wheels unpack under nvidia/cu13/ (CUDA 13) or one folder per library (CUDA 12); gather
# bin, include, lib and nvvm into one toolkit folder as nvcc and candle's build expect.
toolkit=$root/toolkit
if [ ! -d "$toolkit" ]; then
    mkdir -p "$toolkit/bin" "$toolkit/include" "$toolkit/lib"
    for d in "$root"/wheels/nvidia/*/ "$root"/wheels/nvidia/*/*/; do
        [ -d "$d" ] || continue
        for part in bin include lib nvvm; do
            [ -d "$d/$part" ] || continue
            if [ "$part" = nvvm ]; then
                [ -e "$toolkit/nvvm" ] || ln -s "$d/nvvm" "$toolkit/nvvm"
                continue
            fi
            for f in "$d/$part"/*; do
                [ -e "$toolkit/$part/$(basename "$f")" ] || ln -s "$f" "$toolkit/$part/$(basename "$f")"
            done
        done
    done
    chmod +x "$toolkit"/bin/* "$toolkit"/nvvm/bin/* 2>/dev/null || true
    # Linkers look for unversioned names; the wheels ship only libcublas.so.13 and the like.
    for f in "$toolkit"/lib/lib*.so.*; do
        [ -e "$f" ] || continue
        base=$(basename "$f")
        plain=${base%%.so.*}.so
        [ -e "$toolkit/lib/$plain" ] || ln -s "$base" "$toolkit/lib/$plain"
    done
    ln -s lib "$toolkit/lib64"
fi

if ! "$toolkit/bin/nvcc" --version >/dev/null 2>&1; then
    echo "cuda-toolkit.sh: $toolkit/bin/nvcc does not run" >&2
    exit 1
fi
echo "export CUDA_ROOT=$toolkit CUDA_PATH=$toolkit CUDA_TOOLKIT_ROOT_DIR=$toolkit"
echo "export PATH=$toolkit/bin:\$PATH"
echo "export CUDA_COMPUTE_CAP=$cap"
echo "export LIBRARY_PATH=$toolkit/lib\${LIBRARY_PATH:+:\$LIBRARY_PATH}"
