#!/usr/bin/env bash
# The whole GPU check in one prepared command (issues 14 and 23), inside 9 minutes:
#
#     bash benchmarks/gpu_suite.sh OUTDIR [WHEELS] [MNIST]
#
# Runs, most important first, each step with its own time limit, skipped once the suite's budget
# (SUITE_SECONDS, default 520) is spent:
#   1. the device's name and the software versions;
#   2. pytest_gpu: pytest -m gpu, all of it (CuPy and torch-on-CUDA against the float64 CPU
#      reference on every circuit kind incl. hadamard/HCLT; latents; vae leaves; model.module()
#      with torch.compile; Adam; the captured CuPy step; TF32);
#   3. hclt_k16, hclt_k32: HCLT on MNIST side by side with PyJuice (benchmarks/hclt_gpu.py: the
#      same tree, categorical leaves, batch 512, alternating EM epochs, peak memory), einc's
#      steps captured as CUDA graphs but not fused (no torch.compile: its time on a deep tree
#      is unknown);
#   4. rat: the paper's RAT setup at K = 10, 20, 40 (cuda_epoch.py, captured + compiled, matmul);
#      rat_tf32: K = 40 again with --precision tf32;
#   5. cupy: eager torch, CuPy and CuPy with its step captured (cuda_epoch.py --variants
#      eager cupy cupy-graph) at K = 10 and 40;
#   6. hclt_fused: HCLT K = 32 beside PyJuice with einc's default (captured and fused);
#      pyjuice_rat_kN: PyJuice on the RAT setup (when PYJUICE_BENCH names its harness);
#   7. hclt_tf32 (K = 32, TF32, einc only), profile (the top kernels of a K = 40 epoch),
#      mnist (one PD epoch, benchmarks/mnist_epoch.py), bench_float64 (einc bench agreement).
# Paper-scale runs, each a call of its own and run only when named (SUITE_STEPS=paper_hclt or
# paper_spvae, PAPER_MINUTES of training, default 7): MNIST HCLT K=32 (benchmarks/mnist_hclt.py,
# toward <= 1.20 bpd) and SPVAE vs VAE (benchmarks/spvae_mnist.py), their files in OUTDIR;
# PAPER_ARGS is appended to their command lines (a dry run: --train-rows 512 --test-rows 64 ...).
# Everything measured goes to OUTDIR/results.jsonl (one JSON record per measurement: backend,
# device, gpu, setup, K, epoch_s and, beside PyJuice, peer_epoch_s), the step logs to
# OUTDIR/steps.log and the suite's own log to OUTDIR/suite.log.
#
# WHEELS (default .whl) holds what the GPU machine lacks (lark; pyjuice 2.6.3 for the PyJuice
# steps; Pillow for the paper-scale runs' charts): `pip download lark pyjuice==2.6.3 --no-deps
# -d .whl` beforehand; every wheel there whose module does not import is unpacked onto the path. MNIST is the path of
# an mnist.npz (x_train, x_test); default: $EINC_DATA/mnist.npz, ~/.cache/einc/data/mnist.npz
# (`einc data fetch mnist`), ../shared/data/mnist.npz, .gpu/mnist.npz; without it the MNIST
# steps are skipped with a message. einc itself is put on the path as a package tree of links,
# so nothing needs a network or a build.
#
# SUITE_STEPS="a b" runs only those steps. SUITE_DEVICE=cpu is a dry run of the plumbing on a
# machine without a GPU: every step's CPU stand-in (the GPU tests' logic on the CPU, a tiny
# HCLT subset with PyJuice's DAG only, one tiny RAT epoch); numbers from it mean nothing.
set -u
out=$(realpath -m "${1:?usage: bash benchmarks/gpu_suite.sh OUTDIR [WHEELS] [MNIST]}")
root=$(cd "$(dirname "$0")/.." && pwd)
wheels=$(realpath -m "${2:-$root/.whl}")
cd "$root"
mkdir -p "$out"
results="$out/results.jsonl"
export PYTHONUNBUFFERED=1
PY=$(command -v "${PYTHON:-python3}")
deadline=$(( $(date +%s) + ${SUITE_SECONDS:-520} ))
device=${SUITE_DEVICE:-cuda}

log() { echo "[gpu_suite $(date -u +%T)] $*" | tee -a "$out/suite.log"; }

mnist=""
for candidate in ${3:+"$3"} ${EINC_DATA:+"$EINC_DATA/mnist.npz"} "$HOME/.cache/einc/data/mnist.npz" \
    "$root/../shared/data/mnist.npz" "$root/.gpu/mnist.npz"; do
  if [ -f "$candidate" ]; then mnist=$(realpath "$candidate"); break; fi
  [ -n "${3:-}" ] && break  # a path given and missing: say so, do not guess another
done
if [ -z "$mnist" ]; then
  log "MNIST not found (${3:-looked in \$EINC_DATA, ~/.cache/einc/data, ../shared/data, .gpu}); the MNIST steps" \
      "will be skipped: give the path of an mnist.npz as the third argument (fetch it with einc data fetch mnist)"
fi

# step NAME SECONDS COMMAND...: run COMMAND under a time limit (capped by the budget left), from
# a scratch folder (so that no `einc` folder in the working directory shadows the package tree),
# its output appended to steps.log; print its last lines.
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
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
needs_mnist() {  # needs_mnist NAME: true when MNIST is there, else a SKIP line
  [ -n "$mnist" ] && return 0
  log "SKIP $1: no MNIST (third argument)"
  return 1
}

# ---- einc and its missing dependencies on the path (no pip, no network)
site="$scratch/site"
mkdir -p "$site/einc"
for entry in "$root"/einc/*.py "$root"/einc/*/; do ln -s "${entry%/}" "$site/einc/"; done  # modules and wings (cli, io, ...)
for stage in grammar ir compiler backends; do ln -s "$root/$stage" "$site/einc/$stage"; done
# every wheel in WHEELS whose module does not import yet is unpacked onto the path
for wheel in "$wheels"/*.whl; do
  [ -f "$wheel" ] || continue
  dist=$(basename "$wheel" | cut -d- -f1 | tr 'A-Z' 'a-z')
  case "$dist" in pillow) module=PIL ;; *) module=$dist ;; esac
  $PY -c "import $module" 2>/dev/null || (cd "$site" && $PY -m zipfile -e "$wheel" .)
done
export PYTHONPATH="$site:$root/tests${PYTHONPATH:+:$PYTHONPATH}"
peer=pyjuice
if ! $PY -c "import pyjuice" 2>/dev/null; then
  peer=none
  log "pyjuice does not import: the HCLT steps run einc alone (put its wheel in $wheels)"
fi

# ---- 1. device and versions
log "device: $(nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader 2>&1 | head -n 1)"
$PY - "$device" <<'EOF' | tee -a "$out/suite.log" >> "$results"
import json, platform, sys, torch
record = {"benchmark": "device", "suite_device": sys.argv[1],
          "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
          "torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version()}
from importlib.metadata import version
for name in ("cupy", "triton", "lark", "numpy", "pyjuice", "PIL"):
    try:
        module = __import__(name)
        record[name] = getattr(module, "__version__", None) or version(name)
    except Exception as error:
        record[name] = f"missing ({type(error).__name__})"
print(json.dumps(record))
EOF

# ---- 2. correctness on the GPU (on the CPU: the tests' own logic, a subset; see tests/test_gpu.py)
if [ "$device" = cpu ]; then
  export EINC_GPU_TESTS_ON_CPU=1
  selection=(-k "${SUITE_PYTEST_K:-tree and categorical or adam or cupy_captured or tf32 or sampler}")
  parallel=""
else
  selection=()
  parallel=$($PY -c "import xdist" 2>/dev/null && echo "-n 8")  # pytest-xdist: compiles run side by side
fi
step pytest_gpu 160 $PY -m pytest -q -m gpu -p no:cacheprovider --rootdir "$root" $parallel "${selection[@]}" \
  "$root/tests/test_gpu.py" "$root/tests/test_fused_einsum.py"
if grep -q "===== pytest_gpu" "$out/steps.log" 2>/dev/null; then
  $PY - "$out/steps.log" "$device" >> "$results" <<'EOF'
import json, re, sys
lines = open(sys.argv[1]).read().split("===== pytest_gpu")[-1].strip().splitlines()
counts = {kind: int(n) for n, kind in re.findall(r"(\d+) (passed|failed|skipped|errors?)", lines[-1] if lines else "")}
print(json.dumps({"benchmark": "pytest -m gpu", "device": sys.argv[2], **counts}))
EOF
fi

# ---- 3. HCLT on MNIST beside PyJuice (the issue's headline comparison). First captured but not
#      fused: torch.compile of a depth-44 tree has never been timed and could eat the budget;
#      the fused K=32 run comes after the other measurements (hclt_fused)
if [ "$device" = cpu ]; then hclt=(--device cpu --rows 512 --rounds 1); hclt_ks="4"; else hclt=(--rounds 3); hclt_ks="16 32"; fi
for k in $hclt_ks; do
  needs_mnist "hclt_k$k" && step "hclt_k$k" 70 $PY "$root/benchmarks/hclt_gpu.py" --data "$mnist" --K "$k" \
    --peer "$peer" --no-fuse "${hclt[@]}" --out "$results"
done

# ---- 4. the paper's RAT setup (fp32, then K=40 with TF32)
if [ "$device" = cpu ]; then rat=(--device cpu --K 4 --variants eager --epochs 1); rat_cap=180
else rat=(--K 10 20 40 --variants graph); rat_cap=60; fi
step rat $rat_cap $PY "$root/benchmarks/cuda_epoch.py" "${rat[@]}" --kernels matmul --out "$results"
[ "$device" = cuda ] && step rat_tf32 30 $PY "$root/benchmarks/cuda_epoch.py" --K 40 --kernels matmul \
  --variants graph --precision tf32 --out "$results"

# ---- 5. eager torch vs CuPy vs CuPy with captured steps
if [ "$device" = cuda ]; then
  step cupy 50 $PY "$root/benchmarks/cuda_epoch.py" --K 10 40 --kernels auto --variants eager cupy cupy-graph \
    --epochs 3 --out "$results"
else
  log "SKIP cupy: CuPy needs a GPU (tests/test_cupy_graph.py checks the captured step's logic on the CPU)"
fi

# ---- 6. HCLT K=32 with torch.compile fusion (einc's default on CUDA) beside PyJuice
[ "$device" = cuda ] && needs_mnist hclt_fused && step hclt_fused 90 $PY "$root/benchmarks/hclt_gpu.py" \
  --data "$mnist" --K 32 --peer "$peer" --rounds 3 --out "$results"

# ---- 6b. PyJuice on the RAT setup (its weakest ground; the H200 run had einc 8-10x ahead)
if [ "$device" = cuda ] && [ -n "${PYJUICE_BENCH:-}" ] && [ "$peer" = pyjuice ]; then
  harness=$(realpath "$PYJUICE_BENCH")
  for k in 10 20 40; do
    step "pyjuice_rat_k$k" 45 bash -c "$PY '$harness' --K $k --epochs 3 | tee -a '$results'"
  done
else
  log "SKIP pyjuice_rat: set PYJUICE_BENCH to shared/peers/pyjuice_bench.py (copied into the tree) and give its wheel"
fi

# ---- 7. with what is left: TF32 on HCLT, the K=40 profile, one MNIST PD epoch, float64 agreement
if [ "$device" = cuda ]; then
  needs_mnist hclt_tf32 && step hclt_tf32 70 $PY "$root/benchmarks/hclt_gpu.py" --data "$mnist" --K 32 --peer none \
    --rounds 3 --precision tf32 --out "$results"
  step profile 35 $PY "$root/benchmarks/cuda_epoch.py" --profile --K 40 --kernels matmul --out "$results"
  needs_mnist mnist && step mnist 80 $PY "$root/benchmarks/mnist_epoch.py" --data "$mnist" --K ${MNIST_K:-10} \
    --out "$results"
  step bench_float64 45 $PY -m einc bench "$root/benchmarks/efficiency_k10.pc" --backends torch:cuda,cupy,numpy \
    --dtype float64 --samples 1000 --repeats 2 --json "$results"
fi

# ---- paper-scale runs: only when named in SUITE_STEPS (each fills a call of its own;
#      PAPER_MINUTES of training, default 7)
if [[ " ${SUITE_STEPS:-} " == *" paper_hclt "* ]] && needs_mnist paper_hclt; then
  step paper_hclt 540 $PY "$root/benchmarks/mnist_hclt.py" --device "$device" --sums 32 --epochs 350 \
    --budget-minutes "${PAPER_MINUTES:-7}" --threads 8 --data "$mnist" --out "$out/mnist_hclt_k32" ${PAPER_ARGS:-}
fi
if [[ " ${SUITE_STEPS:-} " == *" paper_spvae "* ]] && needs_mnist paper_spvae; then
  # a sitting of PAPER_MINUTES (the run directory continues with spvae_mnist.py --resume OUT/spvae_run)
  half=${PAPER_MINUTES:-7}
  step paper_spvae 540 $PY "$root/benchmarks/spvae_mnist.py" --device "$device" --threads 8 --budget-minutes "$half" \
    --epochs 500 --patience 20 --test-rows 2000 --data "$mnist" --run-dir "$out/spvae_run" ${PAPER_ARGS:-}
fi

# ---- the headline rows (einc beside PyJuice per setup and K) as summary records and a table
$PY "$root/benchmarks/gpu_summary.py" "$results" | tee -a "$out/suite.log"

log "done; $(wc -l < "$results") records in $results"
