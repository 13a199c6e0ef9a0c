#!/usr/bin/env bash
# The one command for a lent GPU machine (no network): install the carried wheels, print the machine,
# run the suite within its budget. Results: $OUT/results.jsonl (one JSON line per result, written as
# each is known) and $OUT/suite.log; the table prints last. Prepare the wheels first, where there is
# network: `bash benchmarks/gpu/wheels.sh` (they travel in .whl/). Extra arguments go to suite.py,
# e.g. `bash benchmarks/gpu/run.sh --stages ceilings,speed --cases i2v-14b-480p/compile`.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT="${OUT:-$PWD/gpu-results}"
mkdir -p "$OUT"
started=$(date +%s)
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "run.sh: installing the carried wheels failed"; exit 1; }
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
# everything is built here from random weights: nothing may wait on a model hub
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
# inductor's compile workers and caches stay on the machine's local disk
export TORCHINDUCTOR_CACHE_DIR=/tmp/inductor-cache
echo "wheels installed in $(( $(date +%s) - started )) s"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm,power.limit --format=csv || true
python3 - <<'PY'
import importlib, platform, torch
print("python", platform.python_version(), "| torch", torch.__version__, "| cuda", torch.version.cuda,
      "| cudnn", torch.backends.cudnn.version())
for name in ("diffusers", "transformers", "accelerate", "peft", "torchao", "av", "fastapi", "pydantic",
             "typing_extensions", "anyio", "sqlalchemy", "numpy", "cv2"):
    try:
        print(f"  {name} {importlib.import_module(name).__version__}")
    except Exception as exc:
        print(f"  {name}: {type(exc).__name__}: {exc}")
PY
budget="${SUITE_BUDGET_S:-450}"
python3 benchmarks/gpu/suite.py --budget-s "$budget" --out "$OUT" --scratch /tmp/wanserve-gpu "$@" 2>&1 | tee "$OUT/suite.log"
rc=${PIPESTATUS[0]}
echo "run.sh: $(( $(date +%s) - started )) s in all, suite exit status $rc"
exit "$rc"
