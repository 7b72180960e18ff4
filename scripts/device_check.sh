#!/usr/bin/env bash
# GPU-machine run: every GPU test, the real-model end-to-end checks, the API tests on the CUDA backend and the
# benchmark, in one call. Expects the carried wheels (.device-wheels, from ../shared/device/stage.sh), the
# default model in the cache (assembled from parts, see bench/RESULTS.md) and $OUT. Prints a summary last.
set -uo pipefail
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .device-wheels/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/device.txt"
summary=()
run() {  # name, command...
  local name=$1; shift
  local t0=$SECONDS
  "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  summary+=("$name rc=$rc $((SECONDS - t0))s :: $(grep -E '[0-9]+ (passed|failed)' "$OUT/$name.log" | tail -1)")
  tail -n 25 "$OUT/$name.log"
}
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
