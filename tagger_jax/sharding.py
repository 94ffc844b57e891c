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

import atexit
import os
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
# barrier, before it stops the coordination service (see `shutdown_distributed`).
SHUTDOWN_GRACE_S = 2.0


def maybe_initialize_distributed(requested: bool = False) -> bool:
    """Calls `jax.distributed.initialize` when the config or the environment asks for it.

    `requested` (config.train.distributed) lets JAX auto-detect the cluster (SLURM, Open MPI,
    Kubernetes, TPU pods). Independently, `JAX_COORDINATOR_ADDRESS` in the environment, with
    `JAX_NUM_PROCESSES` and `JAX_PROCESS_ID`, starts a hand-launched multi-process run. Must run
    before any other JAX call touches the backend. Returns True if this process is now part of a
    multi-process run. A second call is a no-op.
    """
    if jax.distributed.is_initialized():
        return True
    from_env = bool(os.environ.get(ENV_COORDINATOR))
    if not (requested or from_env):
        return False
    kwargs: dict[str, Any] = {}
    if os.environ.get(ENV_NUM_PROCESSES):
        kwargs["num_processes"] = int(os.environ[ENV_NUM_PROCESSES])
    if os.environ.get(ENV_PROCESS_ID):
        kwargs["process_id"] = int(os.environ[ENV_PROCESS_ID])
    jax.distributed.initialize(**kwargs)
    # Runs before JAX's own exit handler (atexit is last in, first out), which then has nothing
    # left to do.
    atexit.register(shutdown_distributed)
    return True


def shutdown_distributed(grace_s: float = SHUTDOWN_GRACE_S,
                         sleep: Callable[[float], Any] = time.sleep) -> None:
    """Leaves a multi-process run: `jax.distributed.shutdown`, with the coordinator's service
    stopped `grace_s` seconds after the shutdown barrier instead of at once.

    Why: on process 0, `jax.distributed.shutdown` stops the coordination service as soon as its
    own client has passed the shutdown barrier, while the other processes are still leaving and
    the service may still be answering their last calls. Once in the project's CI (2 processes on
    a 2-core machine, jax/jaxlib 0.10.2) this aborted process 0 at exit inside gRPC ("Check
    failed: queue.Pop() == nullptr" in `DistributedRuntimeService::Shutdown`), after all its work
    was done and written: a finished job that exits with SIGABRT. Waiting lets the others leave.
    The abort was not reproduced here (none in about 60 two-process runs, loaded or not), so the
    remedy rests on where the abort happens, not on a count before and after.

    Registered with `atexit` by `maybe_initialize_distributed`, so every entry point gets it; may
    also be called directly. A no-op when no multi-process run is active, and on a second call.
    Reaches into `jax._src.distributed.global_state` for the service object (no public API
    exposes it); if that ever moves, this falls back to plain `jax.distributed.shutdown()`.
    """
    if not jax.distributed.is_initialized():
        return
    try:
        from jax._src import distributed as _distributed
        state = _distributed.global_state
        service = state.service
    except (ImportError, AttributeError):
        jax.distributed.shutdown()
        return
    state.service = None
    try:
        jax.distributed.shutdown()  # preemption sync manager, then the client (shutdown barrier)
    finally:
        if service is not None:
            sleep(grace_s)
            service.shutdown()


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
