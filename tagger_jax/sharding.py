"""Device mesh, batch sharding and multi-host start-up for data-parallel training.

One 1-D mesh over every device of every process, with the axis "data". A global batch is split
along that axis; parameters, batch statistics and optimizer state are replicated. Under `jax.jit`
the compiler then inserts the gradient all-reduce and computes BatchNorm's batch mean and variance
over the whole global batch, as the single-device program would: the successor of a pmapped step,
and it runs unchanged across hosts.

Only jax and numpy are imported here, so the benchmark and the train step work on a machine
without the data stack.
"""
from __future__ import annotations

import os
import sys
import time
from typing import Any, Callable, Mapping

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"

# Environment variables that ask for a multi-process run. JAX itself reads the coordinator
# address; the other two are this project's convention for launching processes by hand (e.g.
# two processes on one machine), where no cluster manager can be auto-detected.
ENV_COORDINATOR = "JAX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "JAX_PROCESS_ID"

# Seconds the coordinator (process 0) waits, after every process has passed the shutdown
# barrier, before it stops the coordination service (see `delay_service_shutdown`).
SHUTDOWN_GRACE_S = 2.0
# Seconds `jax.distributed.initialize` waits for every process to join (JAX's default): a
# process started alone, or two given one id, wait this long, then JAX aborts the process.
INIT_TIMEOUT_S = 300


def maybe_initialize_distributed(requested: bool = False, preemption: bool = False) -> bool:
    """Calls `jax.distributed.initialize` when the config or the environment asks for it.

    `requested` (config.train.distributed) lets JAX auto-detect the cluster (SLURM, Open MPI,
    Kubernetes, TPU pods). Independently, `JAX_COORDINATOR_ADDRESS` in the environment, with
    `JAX_NUM_PROCESSES` and `JAX_PROCESS_ID`, starts a hand-launched multi-process run. Must run
    before any other JAX call touches the backend. Returns True if this process is now part of a
    multi-process run. A second call is a no-op. On process 0, the coordination service then
    stops a little after JAX's shutdown barrier (`delay_service_shutdown`).

    `preemption` (training) starts JAX's preemption service, which takes SIGTERM over so that
    every process stops at the same step (`tagger_jax.preemption`). Without it (the inference
    commands) SIGTERM stays the project's own (`errors.guarded`: finished work is written, exit
    status 143); with the service running it was only logged, and the run went on.
    """
    if jax.distributed.is_initialized():
        return True
    from_env = bool(os.environ.get(ENV_COORDINATOR))
    if not (requested or from_env):
        given = [v for v in (ENV_NUM_PROCESSES, ENV_PROCESS_ID) if os.environ.get(v)]
        if given:  # a multi-process run half set up would silently run alone
            print(f"warning: {' and '.join(given)} set without {ENV_COORDINATOR}: this runs "
                  f"as a single process", file=sys.stderr, flush=True)
        return False
    kwargs = requested_processes()
    if "num_processes" in kwargs:
        where = os.environ.get(ENV_COORDINATOR) or "the auto-detected coordinator"
        print(f"jax.distributed: process {kwargs.get('process_id', '?')} of "
              f"{kwargs['num_processes']} joining {where}; it waits for all of them (JAX gives "
              f"up after {INIT_TIMEOUT_S} s)", file=sys.stderr, flush=True)
    jax.config.update("jax_enable_preemption_service", bool(preemption))
    jax.distributed.initialize(initialization_timeout=INIT_TIMEOUT_S, **kwargs)
    delay_service_shutdown()
    connect_with_stdout_on_stderr()
    return True


# Options that change what a run shows, not what it computes: processes may differ in them.
DISPLAY_OPTIONS = ("quiet", "no_progress")


def _as_compared(value: Any) -> Any:
    """An option's value as processes compare it: a string naming an existing file or folder
    by its real path (`one` from its folder and `/data/one` are one input), lists item by item."""
    if isinstance(value, (list, tuple)):
        return [_as_compared(v) for v in value]
    if isinstance(value, str) and value and os.path.exists(value):
        return os.path.realpath(value)
    return value


def option_digests(args: Any) -> tuple[list[str], np.ndarray]:
    """(option names, uint32 digest of each value) as `different_options` compares them."""
    import hashlib
    import json

    values = {k: _as_compared(v) for k, v in sorted(vars(args).items())
              if not callable(v) and k not in DISPLAY_OPTIONS}
    return list(values), np.array([int.from_bytes(hashlib.sha256(json.dumps(
        v, sort_keys=True, default=str).encode()).digest()[:4], "little")
        for v in values.values()], np.uint32)


def different_options(args: Any) -> str | None:
    """The error line when the processes of a multi-process run were given different command-line
    options (`args`: the command's argparse namespace; callables and DISPLAY_OPTIONS left out,
    paths of existing files compared by their real paths), naming the options that differ from
    process 0's; None when they agree or with one process. Every process must
    call it (one all-gather of a 32-bit digest per option). From a new user's trial: `tag` with
    `--hop 1` on one process and `--hop 2` on the other merged both into one file, `evaluate`
    with two `--split` values scored half of each as one split, and inputs or `--output` that
    differed dropped results; each exited 0. Training compares its configs the same way
    (`train_lib.check_same_config_everywhere`)."""
    if jax.process_count() == 1:
        return None
    from jax.experimental import multihost_utils

    values, digests = option_digests(args)
    every = np.asarray(multihost_utils.process_allgather(digests)).reshape(
        jax.process_count(), len(values))
    names = [n for k, n in enumerate(values) if not np.all(every[:, k] == every[0, k])]
    if not names:
        return None
    others = [i for i in range(len(every)) if not np.array_equal(every[i], every[0])]
    shown = ", ".join("the inputs" if n == "inputs" else f"--{n.replace('_', '-')}"
                      for n in names)
    return (f"the processes of this run were given different options: "
            f"{'processes' if len(others) > 1 else 'process'} {', '.join(map(str, others))} "
            f"{'differ' if len(others) > 1 else 'differs'} from process 0 in {shown}; start "
            "every process with the same command line")


def connect_with_stdout_on_stderr() -> None:
    """Runs the run's first collective (a barrier), where Gloo, JAX's CPU collectives, connects
    the processes, with file descriptor 1 pointing at stderr: Gloo writes "[Gloo] Rank 0 is
    connected to 1 peer ranks ..." to stdout, where `tag` prints its results (a user piping
    them found the line among the tags). Call after `jax.distributed.initialize`."""
    from jax.experimental import multihost_utils

    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        multihost_utils.sync_global_devices("tagger-jax: processes connected")
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def requested_processes() -> dict[str, int]:
    """{"num_processes", "process_id"} as `JAX_NUM_PROCESSES` and `JAX_PROCESS_ID` give them
    (either may be absent: JAX then auto-detects it). Raises `errors.ConfigError` (exit status
    2) naming the variable for a value that is not an integer, fewer than 1 process, or an id
    outside 0..N-1, before JAX is asked to join anything."""
    from tagger_jax.errors import ConfigError

    out: dict[str, int] = {}
    for name, key, least in ((ENV_NUM_PROCESSES, "num_processes", 1),
                             (ENV_PROCESS_ID, "process_id", 0)):
        text = os.environ.get(name, "").strip()
        if not text:
            continue
        try:
            out[key] = int(text)
        except ValueError:
            raise ConfigError(f"{name}={text!r} is not an integer") from None
        if out[key] < least:
            raise ConfigError(f"{name} must be at least {least}, got {out[key]}")
    if "process_id" in out and "num_processes" in out and \
            out["process_id"] >= out["num_processes"]:
        raise ConfigError(f"{ENV_PROCESS_ID}={out['process_id']} is not a process of "
                          f"{ENV_NUM_PROCESSES}={out['num_processes']} (ids 0 to "
                          f"{out['num_processes'] - 1})")
    return out


def multi_process_requested() -> bool:
    """Whether the environment asks for a run of more than one process (`JAX_NUM_PROCESSES` >
    1 with a coordinator), known before joining: for checks that must not wait for the others."""
    return bool(os.environ.get(ENV_COORDINATOR)) and \
        requested_processes().get("num_processes", 1) > 1


class _DelayedShutdown:
    """Stands in for JAX's coordination service object: `shutdown()` waits `grace_s` seconds,
    then stops the service. Every other attribute is the service's."""

    def __init__(self, service: Any, grace_s: float, sleep: Callable[[float], Any]):
        self.service, self.grace_s, self.sleep = service, grace_s, sleep

    def shutdown(self) -> None:
        self.sleep(self.grace_s)
        self.service.shutdown()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.service, name)


def delay_service_shutdown(grace_s: float = SHUTDOWN_GRACE_S,
                           sleep: Callable[[float], Any] = time.sleep) -> bool:
    """Makes process 0 stop the coordination service `grace_s` seconds after JAX's shutdown
    barrier instead of at once. Returns True if this process runs the service (process 0).

    `jax.distributed.shutdown` (which JAX runs at exit, after clearing its backends) shuts down
    the preemption sync manager, then the client (a barrier all processes pass together), then,
    on process 0, the service, at once, while the other processes may still be leaving it. Once
    in the project's CI (2 processes on a 2-core machine, jax/jaxlib 0.10.2) process 0 then
    aborted at exit inside gRPC ("Check failed: queue.Pop() == nullptr" in
    `DistributedRuntimeService::Shutdown`), after its work was done and written: a finished job
    that exits with SIGABRT. We believe stopping the service that early is the cause, and give
    the others time to leave; the abort was not reproduced here (none in 69 two-process
    runs, loaded or not), so this rests on where it happened, not on a count before and after.

    JAX's own shutdown sequence and its order stay as they are: only the service object in
    `jax._src.distributed.global_state` (no public API exposes it) is wrapped. Where that ever
    moves, nothing is changed. Called by `maybe_initialize_distributed`; a second call does not
    wrap twice.
    """
    try:
        from jax._src import distributed as _distributed
        state = _distributed.global_state
        service = state.service
    except (ImportError, AttributeError):
        return False
    if service is None:
        return False
    if not isinstance(service, _DelayedShutdown):
        state.service = _DelayedShutdown(service, grace_s, sleep)
    return True


def make_mesh(devices: Any = None) -> Mesh:
    """A 1-D data-parallel mesh over all devices (of all processes), in global device order."""
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def local_mesh(devices: Any = None) -> Mesh:
    """A 1-D data-parallel mesh over this process's devices (inference: every process works on
    its own share of the inputs, so no computation spans hosts)."""
    devices = jax.local_devices() if devices is None else list(devices)
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicate_local(tree: Any, mesh: Mesh) -> Any:
    """Places a pytree on every device of a process-local mesh (see `local_mesh`)."""
    return jax.device_put(tree, replicated(mesh))


def replicated(mesh: Mesh) -> NamedSharding:
    """The sharding of parameters and optimizer state: a full copy on every device."""
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """The sharding of a global batch: split along its leading axis over the data axis."""
    return NamedSharding(mesh, P(DATA_AXIS))


def local_batch_size(global_batch_size: int, mesh: Mesh) -> int:
    """Examples this process feeds per step; the global batch must split evenly over devices."""
    n_dev, n_proc = mesh.devices.size, jax.process_count()
    if global_batch_size % n_dev:
        raise ValueError(f"global batch size {global_batch_size} is not divisible by the "
                         f"{n_dev} devices of the mesh")
    return global_batch_size // n_proc


def shard_batch(batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Assembles each process's local batch into global arrays split over the data axis.

    Process p contributes the rows that its own devices hold; with several processes, the global
    batch is the processes' local batches concatenated in the order of their devices in the mesh.
    """
    sharding = batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
            for k, v in batch.items()}


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Places a pytree of host values (identical on every process) replicated on the mesh."""
    sharding = replicated(mesh)

    def put(x):
        x = np.asarray(x) if not isinstance(x, jax.Array) else x
        if isinstance(x, jax.Array) and jax.process_count() > 1:
            x = np.asarray(jax.device_get(x))
        if jax.process_count() == 1:
            return jax.device_put(x, sharding)
        return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])

    return jax.tree.map(put, tree)


def to_host(tree: Any) -> Any:
    """Fetches a pytree of replicated (or fully addressable) arrays as NumPy on every process."""
    def get(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            # Replicated arrays hold the full value on every device, so the local shard is it.
            return np.asarray(x.addressable_shards[0].data)
        return np.asarray(jax.device_get(x))

    return jax.tree.map(get, tree)


def local_rows(tree: Any) -> Any:
    """This process's rows of batch-sharded arrays (a pytree), as NumPy.

    A fully addressable array (one process, any sharding) converts whole. Otherwise the local
    shards are concatenated in row order: the rows this process contributed when the batch was
    assembled with `shard_batch` (`jax.make_array_from_process_local_data`).
    """
    def get(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            shards = {}
            for shard in x.addressable_shards:
                start = (shard.index[0].start or 0) if shard.index else 0
                shards.setdefault(start, shard)
            return np.concatenate([np.asarray(shards[k].data) for k in sorted(shards)], axis=0)
        return np.asarray(jax.device_get(x))

    return jax.tree.map(get, tree)


def gather(tree: Any) -> Any:
    """Fetches a pytree of batch-sharded arrays whole, as NumPy, on every process."""
    if jax.process_count() == 1:
        return jax.tree.map(lambda x: np.asarray(jax.device_get(x)), tree)
    from jax.experimental import multihost_utils  # only needed across processes

    return jax.tree.map(np.asarray, multihost_utils.process_allgather(tree, tiled=True))
