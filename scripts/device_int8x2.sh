#!/usr/bin/env bash
# GPU-machine run for the int8x2 decode path: matmul parity (all paths), end to end on the whole default model
# and on the 8-layer cut (all precisions), and the 7B benchmark's batch-1 decode with int8x2. Expects the
# default model in the cache and the carried wheels; prints a summary last.
set -uo pipefail
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .device-wheels/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name --format=csv,noheader
python3 -m pytest -q -p no:cacheprovider tests/gpu/test_matmul_parity.py 2>&1 | tail -4 | tee "$OUT/parity.log"
python3 tests/gpu/test_backend_e2e.py make-reference > "$OUT/make_reference.log" 2>&1
python3 -m pytest -q -p no:cacheprovider -rxX tests/gpu/test_backend_e2e.py tests/gpu/test_full_model_e2e.py \
    > "$OUT/e2e.log" 2>&1; tail -8 "$OUT/e2e.log"
python3 - <<'PY'
import json, os
d = json.load(open(os.path.join(os.environ["OUT"], "full_model_e2e.json")))
for k, v in d.items():
    print(f"{k:45s} max {v['max_rel']:.3g} mean {v['mean_rel']:.3g} mism {v['top1_mismatch_decisive']} "
          f"greedy {v['free_running']['same_tokens']:.2f}")
PY
python3 bench/gpu_bench.py --decode-activations int8x2 --batches 8 --out "$OUT" 2>&1 | tail -20
