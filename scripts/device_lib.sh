# Shared set-up for the GPU-machine scripts (sourced): installs the carried wheels (.device-wheels, from
# ../shared/device/stage.sh), records the device in $OUT/device.txt, and defines `run NAME CMD...`, which logs
# CMD to $OUT/NAME.log and appends "NAME rc=.. seconds :: pytest tally" to the `summary` array.
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
  [ "${RUN_TAIL:-0}" -gt 0 ] && tail -n "$RUN_TAIL" "$OUT/$name.log"
  return 0
}
