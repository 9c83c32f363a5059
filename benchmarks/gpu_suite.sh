#!/usr/bin/env bash
# The whole GPU check in one prepared command (issue 14), inside 8 minutes:
#
#     benchmarks/gpu_suite.sh OUTDIR [WHEELS] [MNIST]
#
# Runs, most important first, each step with its own time limit and skipped once the suite's
# budget (SUITE_SECONDS, default 470) is spent:
#   1. the device's name and the software versions;
#   2. benchmarks/cuda_epoch.py: the paper's setup at K = 10, 20, 40, captured+compiled EM epochs
#      with the matmul and the fused (Triton) einsum kernel (epoch, inference, peak memory), and
#      benchmarks/einsum_kernels.py: one einsum layer alone, both kernels;
#   3. pytest -m gpu (CuPy and torch-on-CUDA against the float64 CPU reference, the fused kernel);
#   4. einc bench torch:cuda vs cupy vs numpy on benchmarks/efficiency_k10.pc (float64: agreement)
#      and efficiency_k10/k40.pc (float32: speed; numpy only at K=10, where a CPU epoch is seconds);
#   5. eager torch and CuPy EM epochs at K = 10, 40 (cuda_epoch.py --variants eager cupy) and
#      the top kernels of a K = 40 epoch (cuda_epoch.py --profile);
#   6. one MNIST epoch (PD categorical, K = 10 and 32) and its test bpd (benchmarks/mnist_epoch.py);
#   7. PyJuice side by side at K = 10, 20, 40, when its harness and wheel are given (PYJUICE_BENCH).
# Everything measured goes to OUTDIR/results.jsonl (one JSON record per measurement), the step
# logs to OUTDIR/steps.log and the suite's own log to OUTDIR/suite.log.
#
# WHEELS (default .whl) holds what the GPU machine lacks (lark; pyjuice for step 7); MNIST
# is the MNIST archive (default: where `einc data path mnist` finds it, e.g. after
# `einc data fetch mnist`; without it step 6 stops with a one-line message). einc itself is put on the path as a
# package tree of links, so nothing needs a network or a build.
set -u
out=$(realpath -m "${1:?usage: benchmarks/gpu_suite.sh OUTDIR [WHEELS] [MNIST]}")
root=$(cd "$(dirname "$0")/.." && pwd)
wheels=$(realpath -m "${2:-$root/.whl}")
mnist=${3:+$(realpath -m "$3")}
cd "$root"
mkdir -p "$out"
results="$out/results.jsonl"
export PYTHONUNBUFFERED=1
PY=$(command -v "${PYTHON:-python3}")
deadline=$(( $(date +%s) + ${SUITE_SECONDS:-470} ))

log() { echo "[gpu_suite $(date -u +%T)] $*" | tee -a "$out/suite.log"; }

# step NAME SECONDS COMMAND...: run COMMAND under a time limit (capped by the budget left), from
# a scratch folder (so that no `einc` folder in the working directory shadows the package tree),
# its output appended to steps.log; print its last lines. SUITE_STEPS="a b" runs only those steps.
scratch=$(mktemp -d)
step() {
  local name=$1 limit=$2
  shift 2
  if [ -n "${SUITE_STEPS:-}" ] && [[ " $SUITE_STEPS " != *" $name "* ]]; then
    return
  fi
  local remaining=$(( deadline - $(date +%s) ))
  if [ "$remaining" -lt 25 ]; then
    log "SKIP $name: the suite's budget is spent"
    return
  fi
  [ "$limit" -gt "$remaining" ] && limit=$remaining
  log "START $name (limit ${limit}s)"
  echo "===== $name: $*" >> "$out/steps.log"
  (cd "$scratch" && timeout -k 5 "$limit" "$@") >> "$out/$name.part" 2>&1
  local status=$?
  cat "$out/$name.part" >> "$out/steps.log"
  log "END $name: exit $status$([ $status = 124 ] && echo ' (time limit)')"
  grep -v '^{' "$out/$name.part" | tail -n 12
  rm -f "$out/$name.part"
}

# ---- einc and its missing dependencies on the path (no pip, no network)
site=/tmp/einc-site
rm -rf "$site" && mkdir -p "$site/einc"
for entry in "$root"/einc/*.py "$root"/einc/*/; do ln -s "${entry%/}" "$site/einc/"; done  # modules and wings (cli, io, ...)
for stage in grammar ir compiler backends; do ln -s "$root/$stage" "$site/einc/$stage"; done
if ! $PY -c "import lark" 2>/dev/null; then
  for wheel in "$wheels"/lark-*.whl; do (cd "$site" && $PY -m zipfile -e "$wheel" .); done
fi
if ls "$wheels"/pyjuice-*.whl >/dev/null 2>&1 && ! $PY -c "import pyjuice" 2>/dev/null; then
  for wheel in "$wheels"/pyjuice-*.whl; do (cd "$site" && $PY -m zipfile -e "$wheel" .); done
fi
export PYTHONPATH="$site:$root/tests${PYTHONPATH:+:$PYTHONPATH}"

# ---- 1. device and versions
log "device: $(nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader 2>&1)"
$PY - <<'EOF' | tee -a "$out/suite.log" >> "$results"
import json, platform, torch
record = {"benchmark": "device", "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
          "torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version()}
for name in ("cupy", "triton", "lark", "numpy"):
    try:
        record[name] = __import__(name).__version__
    except Exception as error:
        record[name] = f"missing ({type(error).__name__})"
print(json.dumps(record))
EOF

# ---- 2. the einsum kernels on the paper's setup (the issue's before/after table)
step cuda_epoch 170 $PY "$root/benchmarks/cuda_epoch.py" --K 10 20 40 --kernels matmul fused --variants graph --out "$results"
step einsum_kernels 45 $PY "$root/benchmarks/einsum_kernels.py" --K 10 20 40 --out "$results"

# ---- 3. correctness on the GPU
parallel=$($PY -c "import xdist" 2>/dev/null && echo "-n 8")  # pytest-xdist: compiles run side by side
step pytest_gpu 170 $PY -m pytest -q -m gpu -p no:cacheprovider --rootdir "$root" $parallel \
  "$root/tests/test_gpu.py" "$root/tests/test_fused_einsum.py"
if grep -q "===== pytest_gpu" "$out/steps.log" 2>/dev/null; then
  $PY - "$out/steps.log" >> "$results" <<'EOF'
import json, re, sys
lines = open(sys.argv[1]).read().split("===== pytest_gpu")[-1].strip().splitlines()
counts = {kind: int(n) for n, kind in re.findall(r"(\d+) (passed|failed|skipped|errors?)", lines[-1] if lines else "")}
print(json.dumps({"benchmark": "pytest -m gpu", **counts}))
EOF
fi

# ---- 4. einc bench: agreement in float64, speed in float32 (numpy only at K=10: a CPU epoch there
#      takes seconds, at K=40 minutes)
step bench_float64 60 $PY -m einc bench "$root/benchmarks/efficiency_k10.pc" --backends torch:cuda,cupy,numpy \
  --dtype float64 --samples 1000 --repeats 2 --json "$results"
step bench_float32 90 bash -c "$PY -m einc bench '$root/benchmarks/efficiency_k10.pc' --backends torch:cuda,cupy,numpy --dtype float32 --repeats 2 --json '$results' && $PY -m einc bench '$root/benchmarks/efficiency_k40.pc' --backends torch:cuda,cupy --dtype float32 --repeats 2 --json '$results'"

# ---- 5. eager torch vs CuPy epochs; where a K=40 epoch spends its GPU time
step eager_and_cupy 60 $PY "$root/benchmarks/cuda_epoch.py" --K 10 40 --kernels auto --variants eager cupy --epochs 3 --out "$results"
step profile 40 $PY "$root/benchmarks/cuda_epoch.py" --profile --K 40 --kernels matmul --out "$results"

# ---- 6. MNIST
step mnist 130 $PY "$root/benchmarks/mnist_epoch.py" ${mnist:+--data "$mnist"} --K ${MNIST_K:-10 32} --out "$results"

# ---- 7. PyJuice on the same GPU (the peer the issue's targets name)
if [ -n "${PYJUICE_BENCH:-}" ] && $PY -c "import pyjuice" 2>/dev/null; then
  harness=$(realpath "$PYJUICE_BENCH")
  for k in 10 20 40; do
    step "pyjuice_k$k" 60 bash -c "$PY '$harness' --K $k --epochs 3 | tee -a '$results'"
  done
else
  log "SKIP pyjuice: set PYJUICE_BENCH to shared/peers/pyjuice_bench.py and give its wheel in WHEELS"
fi

log "done; $(wc -l < "$results") records in $results"
