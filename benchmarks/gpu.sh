#!/usr/bin/env bash
# The GPU tables, for a session with a lent GPU, from the repository root:
#
#     bash benchmarks/gpu.sh bench [ARGS]    # part 1: benchmarks/gpu_bench.py ARGS
#     bash benchmarks/gpu.sh paired [ARGS]   # part 2: model_step.py --device gpu ... ARGS
#     bash benchmarks/gpu.sh [ARGS]          # both, ARGS to part 1
#     bash benchmarks/gpu.sh --small [ARGS]  # CPU smoke test of part 1 (tiny model;
#                                            # tests/test_gpu_script.py)
#
# On an H200 (2026-12-04) part 1 took about 5.5 minutes (in two calls: about 4 and 1.5), most of
# it XLA compilations of about 30 s each, and part 2 about 3 minutes. Each part stops itself (420 s, 240 s) and says so; both
# in one command can outlast a 10-minute command limit, so run them as two calls there.
#
# 1. benchmarks/gpu_bench.py: our train step, forward pass, contribution maps and host-side input
#    rate on the device (`--parts` takes a subset, `--json PATH` writes the results).
# 2. benchmarks/model_step.py --device gpu --precision tf32 at batch 256, where torch sees a CUDA
#    device: ours against the authors' model, eager and under torch.compile, in the same process
#    on the same GPU, paired (ARGS are appended: `--batches 16`, `--json PATH`, ...). The
#    authors' contenders need a checkout of github.com/minzwon/self-attention-music-tagging at
#    $AUTHORS (default: .authors, which .gitignore leaves out; copy their training/ folder there
#    and pass `.authors` in the run tool's `carry` list); without one, our PyTorch twin stands in
#    (benchmarks/torch_twin.py). This part reads the authors' weights into our model through the
#    project's configs, which need ml-collections: carry its wheel (below; pure Python), else the
#    part is left out with a line saying so.
#
# The GPU machine has jax, flax, optax, orbax, chex and torch, but not librosa, grain,
# ml-collections or tensorflow-datasets; part 1 needs none of those, part 2 ml-collections only,
# and the project is used from this checkout (not pip-installed). It installs nothing, except
# wheels carried in the ignored .whl/ folder, with --no-index (nothing is downloaded there). To
# carry wheels, prepare them on a machine with network access (see
# /work/.library/device/README.md):
#
#     pip download --only-binary=:all: --python-version 3.12 --implementation cp \
#         --platform manylinux2014_x86_64 --no-deps -d .whl <package>==<version>
#
# (ml-collections==1.1.0 for part 2) and pass `.whl` in the run tool's `carry` list. Output: the
# device name, then one row per measurement as soon as it is done (docs/benchmarks.md records
# the tables).
set -euo pipefail
cd "$(dirname "$0")/.."
# The clone's virtual environment where there is one (the README's commands make .venv), else
# the machine's python3 (the GPU machine's, which has JAX); PYTHON=... chooses another.
if [[ -z "${PYTHON:-}" && -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; fi
PYTHON="${PYTHON:-python3}"
if compgen -G ".whl/*.whl" > /dev/null; then
  "$PYTHON" -m pip install --no-index --no-deps --quiet .whl/*.whl
fi
if [[ "${1:-}" == "--small" ]]; then
  export JAX_PLATFORMS="${JAX_PLATFORMS:-cpu}"
  exec "$PYTHON" benchmarks/gpu_bench.py --small "${@:2}"
fi
parts=(bench paired)
if [[ "${1:-}" == "bench" || "${1:-}" == "paired" ]]; then
  parts=("$1")
  shift
fi
platform=$("$PYTHON" -c 'import jax; d = jax.devices()[0]; print(d.platform, d.device_kind)')
echo "device: $platform"
if [[ "$platform" != gpu* ]]; then
  echo "benchmarks/gpu.sh: JAX sees no GPU here; for a CPU smoke test use --small" >&2
  exit 2
fi
export PYTHONUNBUFFERED=1
status=0

# run LIMIT_S NAME COMMAND...: COMMAND under a time limit; a line says when the limit stopped it.
run() {
  local limit=$1 name=$2 rc=0
  shift 2
  timeout "$limit" "$@" || rc=$?
  if [[ $rc -eq 124 ]]; then
    echo "benchmarks/gpu.sh: $name stopped at its limit of $limit s (rows above are complete)"
  fi
  if [[ $rc -ne 0 ]]; then status=$rc; fi
}

for part in "${parts[@]}"; do
  if [[ $part == bench ]]; then
    run 420 "part 1 (gpu_bench.py)" "$PYTHON" benchmarks/gpu_bench.py "$@"
  elif ! "$PYTHON" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())' 2>/dev/null
  then
    echo "torch sees no CUDA device here: the paired comparison with PyTorch is left out"
  elif ! "$PYTHON" -c 'import ml_collections' 2>/dev/null; then
    echo "no ml_collections here: the paired comparison with PyTorch is left out (carry its" \
      "wheel in .whl: see this script's header)"
  else
    AUTHORS="${AUTHORS:-.authors}"
    if [[ -f "$AUTHORS/training/model.py" ]]; then
      paired=(--authors "$AUTHORS" --contenders ours,authors,authors_compiled)
    else
      echo "no checkout of the authors' repository at $AUTHORS: our PyTorch twin stands in"
      paired=(--contenders ours,twin,twin_compiled)
    fi
    extra=()
    if [[ ${#parts[@]} -eq 1 ]]; then extra=("$@"); fi  # ARGS go to part 2 when named alone
    run 240 "part 2 (model_step.py)" "$PYTHON" benchmarks/model_step.py --device gpu \
      --precision tf32 --batches 256 --rounds 5 --steps 20 --compiled-phases forward \
      "${paired[@]}" "${extra[@]}"
  fi
done
exit "$status"
