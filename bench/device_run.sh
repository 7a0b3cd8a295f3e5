#!/usr/bin/env bash
# On the GPU device machine (its image has torch; nothing can be fetched): install kvferry beside
# the image's torch from the carried wheels, then run the CUDA tests and the GPU figures.
#   here:   pip download the wheels into .wheels/ (docs/gpu.md says which)
#   device: bash bench/device_run.sh   (carry .wheels; results under $OUT)
set -uo pipefail
OUT=${OUT:-/tmp/kvferry-out}
mkdir -p "$OUT"
# The image's Python that has torch (a plain python3 on PATH may not).
for PY in /opt/torch/.venv/bin/python3 $(which -a python3); do
  "$PY" -c "import torch" 2>/dev/null && break
done
# Our packages go in their own folder, ahead of the image's on PYTHONPATH (its grpcio may be
# older than our generated stubs need); torch and numpy stay the image's.
SITE=/tmp/kvf-site
"$PY" -m pip install -q --no-index --find-links .wheels --target "$SITE" grpcio \
  grpcio-health-checking grpcio-reflection protobuf googleapis-common-protos transitions \
  prometheus-client pytest \
  pytest-timeout setuptools wheel typing-extensions pyzmq 2>&1 | tail -3
PYTHONPATH=$SITE "$PY" -m pip install -q --no-index --no-deps --no-build-isolation \
  --target "$SITE" . 2>&1 | tail -3
export PYTHONPATH=$SITE
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  "$PY" -c "import sys, torch, grpc, google.protobuf as p; print(sys.version.split()[0], 'torch', torch.__version__, 'grpcio', grpc.__version__, 'protobuf', p.__version__)"
} 2>&1 | tee "$OUT/device.txt"
"$PY" -m pytest -q -p no:cacheprovider tests/e2e/test_cuda.py tests/client/test_cuda_ipc_refusals.py \
  tests/integrations/test_vllm_connector_cuda.py \
  2>&1 | tee "$OUT/pytest.txt" | tail -25
"$PY" -m bench.gpu --json "$OUT/gpu.json" 2>&1 | tee "$OUT/bench.txt" | tail -25
