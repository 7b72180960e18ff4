#!/usr/bin/env bash
# Builds llama.cpp's llama-bench and llama-batched-bench (CUDA, sm_90, flash attention) into build/llamacpp/, for
# bench/llamacpp_baseline.py. The source is the llama.cpp that llama-cpp-python vendors in its PyPI sdist (PyPI is
# reachable from the machines here, GitHub is not); LLAMA_CPP_PYTHON_VERSION picks the release.
#
# Needs a CUDA toolkit with cuBLAS and the driver stub (lib64/stubs/libcuda.so), cmake and ninja. The binaries link
# cuBLAS and the driver dynamically, so they run on a machine whose CUDA 13 toolkit provides libcublas.so.13.
# Usage: bash scripts/build_llamacpp.sh [DEST]     (2 cores: about half an hour, most of it ggml-cuda)
set -euo pipefail
version=${LLAMA_CPP_PYTHON_VERSION:-0.3.36}
dest=$(realpath -m "${1:-build/llamacpp}")
work=${LLAMA_CPP_WORK:-/tmp/llamacpp-src}
mkdir -p "$work" "$dest"
python3 -m pip download -q --no-deps --no-binary :all: "llama-cpp-python==$version" -d "$work"
tar xzf "$work/llama_cpp_python-$version.tar.gz" -C "$work"
src="$work/llama_cpp_python-$version/vendor/llama.cpp"
cmake -S "$src" -B "$src/build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 \
  -DGGML_NATIVE=OFF -DGGML_CUDA_FA_ALL_QUANTS=OFF -DBUILD_SHARED_LIBS=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF
ninja -C "$src/build" llama-bench llama-batched-bench
for tool in llama-bench llama-batched-bench; do
  strip -o "$dest/$tool" "$src/build/bin/$tool"
done
(cd "$src" && git log -1 --format='llama.cpp %H %cs' 2>/dev/null || echo "llama.cpp from llama-cpp-python $version") \
  | tee "$dest/VERSION"
ls -l "$dest"
