"""Shared by the tests that start JAX in child processes: their environments on the CPU."""
from __future__ import annotations

import os
import socket

COORDINATOR_VARIABLES = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


def free_port() -> int:
    """A TCP port on localhost that nothing listens on now (for a jax.distributed coordinator)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_env(devices: int, **extra: str) -> dict:
    """This process's environment for a child JAX process on the CPU with `devices` forced host
    devices, without any jax.distributed variables of ours, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if k not in COORDINATOR_VARIABLES}
    env.update(JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", **extra)
    return env


def distributed_envs(processes: int, devices: int, port: int, **extra: str) -> list[dict]:
    """One `cpu_env` per process of a jax.distributed job coordinated on localhost:`port`."""
    return [cpu_env(devices, JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
                    JAX_NUM_PROCESSES=str(processes), JAX_PROCESS_ID=str(i), **extra)
            for i in range(processes)]
