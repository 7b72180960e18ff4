#!/usr/bin/env bash
# GPU-machine run for performance work: the matmul parity tests, the tiled-path sweep of bench/matmul_bench.py
# and bench/gpu_bench.py at batch sizes 1..64. Expects the carried wheels (.device-wheels, from
# ../shared/device/stage.sh) and $OUT; EXTRA (optional) is run last. Prints a summary last.
set -uo pipefail
source "$(dirname "$0")/device_lib.sh"
python3 -m service.backends.cuda_runtime --arch sm_90 > "$OUT/build.log" 2>&1 || tail -20 "$OUT/build.log"
run parity python3 -m pytest -q -p no:cacheprovider -x tests/gpu/test_matmul_parity.py ${PARITY_EXTRA:-}
[ "${MM:-1}" = 1 ] && run matmul_bench python3 -m bench.matmul_bench --only tiled --quick --out "$OUT"
[ "${GB:-1}" = 1 ] && run gpu_bench python3 bench/gpu_bench.py --decode-activations int8x2 --batches "${BATCHES:-1,2,4,8,16,32,64}" --out "$OUT"
[ -n "${EXTRA:-}" ] && run extra bash -c "$EXTRA"
echo "================ summary ================"
grep -E "failed|Error|error" "$OUT/parity.log" | head -20
[ -f "$OUT/matmul_bench.log" ] && grep -E "^(tiled|frag|step7b)" "$OUT/matmul_bench.log" | head -120
[ -f "$OUT/gpu_bench.log" ] && tail -22 "$OUT/gpu_bench.log"
cat "$OUT/device.txt"
printf '%s\n' "${summary[@]}"
