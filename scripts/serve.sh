#!/usr/bin/env bash
# Set up (first run only) and start the server on the default model: gRPC :50051, OpenAI HTTP :8000,
# metrics :9090. NumPy backend without a GPU. Extra flags are passed to `python -m service serve`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m service serve "$@"
