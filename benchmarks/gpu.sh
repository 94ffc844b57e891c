#!/usr/bin/env bash
# The first-GPU table, as one command for a session with a lent GPU (about 3-4 minutes on an
# H100/H200 class device; hard limit 285 s so that it fits 5 minutes of device time):
#
#     bash benchmarks/gpu.sh            # on the GPU machine, from the repository root
#     bash benchmarks/gpu.sh --small    # CPU smoke test (tiny model; tests/test_gpu_script.py)
#
# The GPU machine has jax, flax, optax, orbax, chex and torch, but not librosa, grain,
# ml-collections or tensorflow-datasets; benchmarks/gpu_bench.py needs none of those and the
# project is used from this checkout (not pip-installed). It installs nothing, except wheels
# carried in the ignored .whl/ folder, with --no-index (nothing is downloaded there). To carry
# extra wheels, prepare them on a machine with network access (see
# /work/.library/device/README.md):
#
#     pip download --only-binary=:all: --python-version 3.12 --implementation cp \
#         --platform manylinux2014_x86_64 --no-deps -d .whl <package>==<version>
#
# and pass `.whl` in the run tool's `carry` list. Output: the device name, then one row per
# measurement as soon as it is done (docs/benchmarks.md records the table).
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
exec timeout 285 "$PYTHON" benchmarks/gpu_bench.py "$@"
