"""XLA:CPU options of the inference commands (`tagger_jax.xla_cpu`): when the YNNPACK fusions are
turned off, that the entry points do it before their main and only for inference, and that the
flag reaches XLA (no YNNPACK fusion in the compiled program)."""
from __future__ import annotations

import os
import runpy
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tagger_jax import cli, xla_cpu

ROOT = Path(__file__).resolve().parents[1]
OFF = "--xla_cpu_experimental_ynn_fusion_type="
IN_RANGE = xla_cpu.JAXLIB_RANGE[0]
needs_flag = pytest.mark.skipif(  # the flag is set (and known to XLA) only on these jaxlibs
    xla_cpu.inference_flags({}, xla_cpu.jaxlib_version()) is None,
    reason="jaxlib outside JAXLIB_RANGE")


@pytest.mark.parametrize("environ, version, expected", [
    ({}, IN_RANGE, OFF),
    ({"XLA_FLAGS": "--xla_force_host_platform_device_count=4"}, IN_RANGE,
     "--xla_force_host_platform_device_count=4 " + OFF),  # the user's flags are kept
    ({"XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type=dot"}, IN_RANGE, None),  # theirs wins
    ({"XLA_FLAGS": OFF}, IN_RANGE, None),  # already set (e.g. before a re-exec): not doubled
    ({"TAGGER_JAX_XLA_DEFAULTS": "1"}, IN_RANGE, None),  # opted out
    ({"TAGGER_JAX_XLA_DEFAULTS": "0"}, IN_RANGE, OFF),
    ({}, None, None),  # no jaxlib
    ({}, (0, 9), None),  # older than the flag's known versions: XLA would abort on it
    ({}, xla_cpu.JAXLIB_RANGE[1], None),  # newer than measured: XLA's defaults
])
def test_inference_flags(environ, version, expected):
    assert xla_cpu.inference_flags(environ, version) == expected


def test_use_for_inference_sets_the_environment(monkeypatch):
    monkeypatch.setattr(xla_cpu, "jaxlib_version", lambda: IN_RANGE)
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    assert xla_cpu.use_for_inference(env) is True
    assert env["XLA_FLAGS"] == "--xla_force_host_platform_device_count=2 " + OFF
    assert xla_cpu.use_for_inference(env) is False  # idempotent
    monkeypatch.setattr(xla_cpu, "jaxlib_version", lambda: (0, 9))
    untouched = {}
    assert xla_cpu.use_for_inference(untouched) is False and untouched == {}


def test_jaxlib_version_is_the_installed_one():
    import jaxlib

    major, minor = (int(x) for x in jaxlib.__version__.split(".")[:2])
    assert xla_cpu.jaxlib_version() == (major, minor)


@pytest.mark.parametrize("argv, command", [
    (["tag", "--checkpoint", "m", "x.wav"], "tag"),
    (["--no-compilation-cache", "explain", "--out", "o"], "explain"),
    (["train", "--config", "c.py"], "train"),
    (["--help"], None),
])
def test_command_of(argv, command):
    assert cli.command_of(argv) == command


@pytest.mark.parametrize("argv, turned_off", [
    (["tag", "--checkpoint", "m", "x.wav"], True),
    (["evaluate", "--workdir", "w"], True),
    (["explain", "--checkpoint", "m", "x.wav"], True),
    (["embed", "--checkpoint", "m", "x.wav"], True),
    (["train", "--config", "c.py"], False),  # training keeps XLA's defaults
    (["build-dataset", "synthetic_tags"], False),
])
def test_console_sets_flags_for_inference_commands_before_reexec(monkeypatch, argv, turned_off):
    from tagger_jax import huge_pages

    calls = []
    monkeypatch.setattr(sys, "argv", ["tagger-jax", *argv])
    monkeypatch.setattr(xla_cpu, "use_for_inference", lambda: calls.append("flags"))
    monkeypatch.setattr(huge_pages, "reexec_with_huge_pages", lambda: calls.append("reexec"))
    monkeypatch.setattr(cli, "main", lambda argv=None, owns_process=False: calls.append(
        "main" if owns_process else "main, not owning the process") or 0)
    assert cli.console() == 0
    assert calls == (["flags"] if turned_off else []) + ["reexec", "main"]


class Called(Exception):
    pass


def _refuse(*_):
    raise Called


@pytest.mark.parametrize("script, turned_off", [
    ("evaluate.py", True), ("explain.py", True), ("train.py", False)])
def test_scripts(monkeypatch, script, turned_off):
    from tagger_jax import huge_pages

    monkeypatch.setattr(xla_cpu, "use_for_inference", _refuse)
    monkeypatch.setattr(huge_pages, "reexec_with_huge_pages", lambda: None)
    monkeypatch.setattr(sys, "argv", [script, "--no-such-flag"])
    # the flags are set before main parses (and refuses) the bad flag; train.py never sets them
    with pytest.raises(Called if turned_off else SystemExit):
        runpy.run_path(str(ROOT / script), run_name="__main__")


_PROBE = """
import sys
import textwrap
from tagger_jax import xla_cpu
print("set" if xla_cpu.use_for_inference() else "unset")
import jax, jax.numpy as jnp
f = jax.jit(lambda a, b: jax.nn.relu(a @ b + 1.0))
text = f.lower(jnp.ones((64, 128)), jnp.ones((128, 32))).compile().as_text()
print("ynn" if "__ynn_fusion" in text else "no-ynn")
"""


@needs_flag
def test_the_flag_reaches_xla():
    """In a fresh process the compiled dot has no YNNPACK fusion after `use_for_inference`, and
    has one when the user opts out (XLA's defaults on this jaxlib use it for a dot)."""
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", xla_cpu.OPT_OUT)}
    env["JAX_PLATFORMS"] = "cpu"
    out = {}
    for name, extra in (("on", {}), ("opted_out", {xla_cpu.OPT_OUT: "1"})):
        proc = subprocess.run([sys.executable, "-c", _PROBE], env={**env, **extra},
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        out[name] = proc.stdout.split()
    assert out["on"] == ["set", "no-ynn"]
    assert out["opted_out"] == ["unset", "ynn"]


@needs_flag
def test_model_still_matches_the_float64_reference_with_the_flag():
    """The inference setting changes the order of float32 sums only: the model's logits,
    probabilities and attention, and the contribution map's overridden forward pass, still match
    the float64 NumPy reference of tests/test_model.py within its tolerances (1e-6 on
    probabilities) when run with YNNPACK_OFF."""
    env = {k: v for k, v in os.environ.items() if k != xla_cpu.OPT_OUT}
    env.update(JAX_PLATFORMS="cpu", XLA_FLAGS=xla_cpu.YNNPACK_OFF)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--no-header",
         "-n", "0", str(ROOT / "tests" / "test_model.py"), "-k",
         "matches_numpy_reference or override_matches_reference"],
        env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0 and "4 passed" in proc.stdout, proc.stdout[-3000:]


def test_use_for_inference_after_jax_started_warns_and_changes_nothing():
    """A trial's notebook called it after a JAX computation and got True, with no effect (XLA
    reads XLA_FLAGS once, when the backend starts). Before the backend starts it still sets
    the flag, also after `import jax`."""
    code = textwrap.dedent("""
        import os, warnings
        os.environ.pop("XLA_FLAGS", None)
        os.environ.pop("TAGGER_JAX_XLA_DEFAULTS", None)
        import jax
        from tagger_jax import xla_cpu
        early = xla_cpu.use_for_inference()
        flags = os.environ.pop("XLA_FLAGS", None)
        jax.numpy.zeros(1).block_until_ready()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            late = xla_cpu.use_for_inference()
        print(early, flags is not None, late, os.environ.get("XLA_FLAGS"),
              [str(w.message)[:70] for w in caught])
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    in_range = xla_cpu.JAXLIB_RANGE[0] <= xla_cpu.jaxlib_version() < xla_cpu.JAXLIB_RANGE[1]
    if not in_range:
        pytest.skip("the installed jaxlib is outside JAXLIB_RANGE: the flag is never set")
    assert out.stdout.split()[:4] == ["True", "True", "False", "None"], out.stdout
    assert "JAX's backend has already started" in out.stdout
