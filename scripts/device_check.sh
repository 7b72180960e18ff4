#!/usr/bin/env bash
# GPU-machine run: every GPU test, the real-model end-to-end checks, the API tests on the CUDA backend and the
# benchmark, in one call. Expects the carried wheels (.device-wheels, from ../shared/device/stage.sh), the
# default model in the cache (assembled from parts, see bench/RESULTS.md) and $OUT. Prints a summary last.
set -uo pipefail
RUN_TAIL=25
source "$(dirname "$0")/device_lib.sh"
run gpu_ops python3 -m pytest -q -p no:cacheprovider tests/gpu --ignore=tests/gpu/test_memory.py \
    --ignore=tests/gpu/test_backend_e2e.py --ignore=tests/gpu/test_full_model_e2e.py
run gpu_memory python3 -m pytest -q -p no:cacheprovider -s tests/gpu/test_memory.py
python3 tests/gpu/test_backend_e2e.py make-reference > "$OUT/make_reference.log" 2>&1
run gpu_e2e python3 -m pytest -q -p no:cacheprovider -s tests/gpu/test_backend_e2e.py tests/gpu/test_full_model_e2e.py
run api_cuda python3 -m pytest -q -p no:cacheprovider -s --backend cuda tests/test_api_gpu.py tests/test_client_sdk.py
[ "${BENCH:-1}" = 1 ] && run bench python3 bench/gpu_bench.py --out "$OUT"
echo "================ summary ================"
cat "$OUT/device.txt"
printf '%s\n' "${summary[@]}"
