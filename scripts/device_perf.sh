#!/usr/bin/env bash
# GPU-machine run for performance work: the matmul parity tests, the tiled-path sweep of bench/matmul_bench.py
# and bench/gpu_bench.py at batch sizes 1..64. Expects the carried wheels (.device-wheels, from
# ../shared/device/stage.sh) and $OUT; EXTRA (optional) is run last. Prints a summary last.
set -uo pipefail
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .device-wheels/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/device.txt"
python3 -m service.backends.cuda_runtime --arch sm_90 > "$OUT/build.log" 2>&1 || tail -20 "$OUT/build.log"
summary=()
run() {  # name, command...
  local name=$1; shift
  local t0=$SECONDS
  "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  summary+=("$name rc=$rc $((SECONDS - t0))s :: $(grep -E '[0-9]+ (passed|failed)' "$OUT/$name.log" | tail -1)")
}
run parity python3 -m pytest -q -p no:cacheprovider -x tests/gpu/test_matmul_parity.py ${PARITY_EXTRA:-}
[ "${MM:-1}" = 1 ] && run matmul_bench python3 -m bench.matmul_bench --only tiled --quick --out "$OUT"
[ "${GB:-1}" = 1 ] && run gpu_bench python3 bench/gpu_bench.py --decode-activations int8x2 --batches "${BATCHES:-1,2,4,8,16,32,64}" --out "$OUT"
[ -n "${EXTRA:-}" ] && run extra bash -c "$EXTRA"
echo "================ summary ================"
grep -E "failed|Error|error" "$OUT/parity.log" | head -20
[ -f "$OUT/matmul_bench.log" ] && grep -E "^(tiled|step7b)" "$OUT/matmul_bench.log" | head -120
[ -f "$OUT/gpu_bench.log" ] && tail -22 "$OUT/gpu_bench.log"
cat "$OUT/device.txt"
printf '%s\n' "${summary[@]}"
