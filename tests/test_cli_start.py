"""Fast start: `import tagger_jax` and `tagger-jax --help` import neither TensorFlow Datasets nor
JAX; datasets register their TFDS builders when first named; the compilation cache is written
where the environment says, and not at all when turned off."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

HEAVY = ("tensorflow_datasets", "jax", "flax", "librosa")


def _python(code: str, **env) -> str:
    full = {**os.environ, "JAX_PLATFORMS": "cpu", **env}
    return subprocess.run([sys.executable, "-c", code], env=full, capture_output=True, text=True,
                          check=True).stdout


def test_import_and_help_load_nothing_heavy():
    out = _python(
        "import sys, contextlib, io\n"
        "import tagger_jax\n"
        "from tagger_jax import cli\n"
        "with contextlib.redirect_stdout(io.StringIO()) as f:\n"
        "    try:\n"
        "        cli.main(['--help'])\n"
        "    except SystemExit:\n"
        "        pass\n"
        "assert 'embed' in f.getvalue()\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n")
    assert out.strip() == "[]"


def test_naming_a_dataset_registers_the_builders():
    out = _python("import tensorflow_datasets as tfds\n"
                  "import tagger_jax\n"
                  "def known():\n"
                  "    try:\n"
                  "        return tfds.builder_cls('synthetic_tags').name == 'synthetic_tags'\n"
                  "    except Exception:\n"
                  "        return False\n"
                  "print(known())\n"
                  "import tagger_jax.datasets\n"
                  "print(known())\n")
    assert out.split() == ["False", "True"]


def test_compilation_cache_directory_from_the_environment(tmp_path, monkeypatch):
    from tagger_jax import compilation_cache

    monkeypatch.setenv(compilation_cache.ENV, str(tmp_path / "c"))
    assert compilation_cache.cache_dir() == tmp_path / "c"
    monkeypatch.setenv(compilation_cache.ENV, "off")
    assert compilation_cache.cache_dir() is None and compilation_cache.enable() is None
    monkeypatch.delenv(compilation_cache.ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert compilation_cache.cache_dir() == tmp_path / "xdg" / "tagger-jax" / "jax-compilation"


@pytest.mark.parametrize("setting", ["dir", "off"])
def test_a_jitted_program_lands_in_the_cache_unless_turned_off(tmp_path, setting):
    cache = tmp_path / "cache"
    value = str(cache) if setting == "dir" else "0"
    _python("from tagger_jax import compilation_cache\n"
            "compilation_cache.enable()\n"
            "import jax, jax.numpy as jnp\n"
            "jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)\n"
            "jax.jit(lambda x: jnp.sin(x) @ x.T)(jnp.ones((64, 64))).block_until_ready()\n",
            TAGGER_JAX_COMPILATION_CACHE=value)
    if setting == "dir":
        assert any(cache.iterdir())
    else:
        assert not cache.exists()


def test_no_compilation_cache_is_taken_before_or_after_the_command():
    from tagger_jax import cli

    parse = cli.build_parser().parse_args
    assert parse(["--no-compilation-cache", "tag", "--checkpoint", "m", "x.wav"]) \
        .no_compilation_cache
    assert parse(["tag", "--checkpoint", "m", "x.wav", "--no-compilation-cache"]) \
        .no_compilation_cache
    assert not parse(["tag", "--checkpoint", "m", "x.wav"]).no_compilation_cache
    assert parse(["train", "--config", "c.py", "--no-compilation-cache"]).no_compilation_cache


def test_a_usage_error_is_one_line_with_status_2(capsys):
    from tagger_jax import cli

    with pytest.raises(SystemExit) as e:
        cli.main(["tag", "--checkpoint", "m", "--bogus", "x.wav"])
    err = [l for l in capsys.readouterr().err.splitlines() if l.strip()]
    assert e.value.code == 2
    assert len(err) == 1 and "unrecognized arguments: --bogus" in err[0], err


def test_project_warnings_are_one_line_other_warnings_unchanged(capsys):
    """errors.warning_lines: a project warning (evaluate's undefined-metric note) is one
    `warning:` line without Python's FILE:LINE prefix; another category goes on to Python's
    (here pytest's) warning machinery unchanged."""
    import warnings

    from tagger_jax import errors
    from tagger_jax.evaluation import UndefinedMetricWarning

    with pytest.warns(RuntimeWarning, match="something else") as passed_on:
        with errors.warning_lines(UndefinedMetricWarning):
            warnings.warn("2 of 18 tags have only one label value", UndefinedMetricWarning)
            warnings.warn("something else", RuntimeWarning)
    assert capsys.readouterr().err == "warning: 2 of 18 tags have only one label value\n"
    assert [w.category for w in passed_on] == [RuntimeWarning]


def test_a_closed_output_pipe_ends_the_command_quietly_with_status_141():
    """`tagger-jax tag DIR | head -1`: the reader goes away while results are still printed.
    The command stops as a tool killed by SIGPIPE does (status 141), without an error line, a
    crash file or Python's "Exception ignored" at exit."""
    code = ("import sys\nfrom tagger_jax import errors\n"
            "def run():\n    for i in range(10 ** 6):\n        print('result', i)\n"
            "sys.exit(errors.guarded(run))\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.readline()
    proc.stdout.close()  # as `head -1` does
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141
    assert err == "", err


def test_ctrl_c_while_the_command_starts_stops_it_at_once_with_status_130(tmp_path):
    """A trial's Ctrl-C in a command's first second, while JAX was imported, was dropped by a
    garbage-collection callback (the run went on to its end, status 0) or broke an extension's
    initialisation (an ImportError, an abort). The entry points hold it (`defer_interrupts`)
    until the command's guard starts, which stops at once: status 130, one line, nothing done;
    a process that would re-execute itself does not (the new one would forget it)."""
    code = ("import os, signal, sys\n"
            "signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal\n"
            "from tagger_jax import cli, errors, huge_pages\n"
            "errors.defer_interrupts()\n"
            "os.kill(os.getpid(), signal.SIGINT)  # while JAX is imported below\n"
            "import jax\n"
            "assert errors.interrupted_early()\n"
            "huge_pages.wanted = lambda: True\n"
            "os.execve = lambda *a: sys.exit('re-executed')\n"
            "huge_pages.reexec_with_huge_pages()\n"
            f"sys.exit(cli.main(['tag', '--checkpoint', 'no-model', '--output', "
            f"{str(tmp_path / 'out.json')!r}, 'x.wav'], owns_process=True))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"}, timeout=120)
    assert proc.returncode == 130, proc.stderr
    assert proc.stderr == "tagger-jax: interrupted; finished results are kept\n"
    assert not (tmp_path / "out.json").exists()


def test_ctrl_c_during_an_import_waits_for_the_import_to_finish(tmp_path):
    """Raised in the middle of JAX's import (a command that imports it inside its guard: train,
    or --no-compilation-cache), Ctrl-C broke an extension's initialisation: an ImportError, an
    abort, a crash, or a run that went on (a verifying user). The guard's handler sends it again
    once the import is done: the module is whole, then the command stops with status 130."""
    (tmp_path / "slow_module.py").write_text(
        "import os, signal, time\n"
        "os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C while this module is imported\n"
        "end = time.monotonic() + 0.3\n"
        "while time.monotonic() < end:\n"
        "    pass\n"
        "whole = True\n")
    code = ("import signal, sys, time\n"
            "signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal\n"
            f"sys.path.insert(0, {str(tmp_path)!r})\n"
            "from tagger_jax import errors\n"
            "def run():\n"
            "    import slow_module\n"
            # one write call: the Ctrl-C sent again after the import lands between bytecodes,
            # possibly right here; print's separate writes could be cut in two (flushed at exit)
            "    sys.stdout.write(f'imported whole: {slow_module.whole}\\n')\n"
            "    time.sleep(30)\n"
            "sys.exit(errors.guarded(run))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 130, proc.stderr
    assert proc.stdout == "imported whole: True\n"
    assert proc.stderr == "tagger-jax: interrupted; finished results are kept\n"
