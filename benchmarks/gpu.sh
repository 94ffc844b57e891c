#!/usr/bin/env bash
# The GPU tables, as one command for a session with a lent GPU: about 8 minutes on an H200
# (2026-12-04: part 1 about 5.5 minutes, most of it ten XLA compilations of about 30 s each; part 2
# about 2.5 minutes); each part stops itself, after 360 s and 240 s:
#
#     bash benchmarks/gpu.sh            # on the GPU machine, from the repository root
#     bash benchmarks/gpu.sh --small    # CPU smoke test of the first part (tiny model;
#                                       # tests/test_gpu_script.py)
#
# 1. benchmarks/gpu_bench.py: our train step, forward pass, contribution maps and host-side input
#    rate on the device (arguments after the script's name go to it, e.g. --json PATH).
# 2. Where torch sees a CUDA device: benchmarks/model_step.py --device gpu, ours against the
#    authors' model (eager and under torch.compile) in the same process on the same GPU, paired,
#    TF32 matmuls in both. The authors' contenders need a checkout of
#    github.com/minzwon/self-attention-music-tagging at $AUTHORS (default: .authors, ignored by
#    git; copy their training/ folder there and pass `.authors` in the run tool's `carry` list);
#    without one, our PyTorch twin stands in (benchmarks/torch_twin.py). This part reads the
#    authors' weights into our model through the project's configs, which need ml-collections:
#    carry its wheel (below; pure Python), else the part is left out with a line saying so.
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
# (ml-collections==1.1.0 for part 2) and pass `.whl` in the run tool's `carry` list. Output: the device name, then one row per
# measurement as soon as it is done (docs/benchmarks.md records the tables).
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
"$PYTHON" -c 'import jax; d = jax.devices()[0]; print("device:", d.device_kind, d.platform)'
export PYTHONUNBUFFERED=1
status=0
timeout 360 "$PYTHON" benchmarks/gpu_bench.py "$@" || status=$?
if ! "$PYTHON" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())' 2>/dev/null; then
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
  timeout 240 "$PYTHON" benchmarks/model_step.py --device gpu --precision tf32 \
    --batches 256 --rounds 5 --steps 20 --compiled-phases forward "${paired[@]}" || status=$?
fi
exit "$status"
