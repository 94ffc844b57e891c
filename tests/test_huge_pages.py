"""tagger_jax.huge_pages: when a command re-executes itself with glibc's huge-page tunable."""
from __future__ import annotations

import os
import platform
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

from tagger_jax import cli, huge_pages

ROOT = Path(__file__).resolve().parents[1]
GLIBC = ("glibc", "2.36")


@pytest.mark.parametrize("text, mode", [
    ("always [madvise] never\n", "madvise"),
    ("[always] madvise never\n", "always"),
    ("always madvise [never]\n", "never"),
    ("always madvise never\n", None),
    ("", None),
])
def test_thp_mode_is_the_bracketed_word(tmp_path, text, mode):
    path = tmp_path / "enabled"
    path.write_text(text)
    assert huge_pages.thp_mode(path) == mode


def test_thp_mode_is_none_without_the_file(tmp_path):
    assert huge_pages.thp_mode(tmp_path / "missing") is None


@pytest.mark.parametrize("environ, libc, mode, expected", [
    ({}, GLIBC, "madvise", True),
    ({}, ("glibc", "2.35"), "madvise", True),
    ({}, ("glibc", "3.0"), "madvise", True),
    ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, GLIBC, "madvise", False),  # the user's
    ({"GLIBC_TUNABLES": huge_pages.TUNABLE}, GLIBC, "madvise", False),  # already re-executed
    ({}, GLIBC, "always", False),  # huge pages without asking
    ({}, GLIBC, "never", False),  # none to be had
    ({}, GLIBC, None, False),  # no transparent huge pages
    ({}, ("glibc", "2.34"), "madvise", False),  # no glibc.malloc.hugetlb yet
    ({}, ("", ""), "madvise", False),  # musl or unknown
    ({}, ("glibc", "unknown"), "madvise", False),
])
def test_should_reexec(environ, libc, mode, expected):
    assert huge_pages.should_reexec(environ, libc, mode) is expected


# The kernel's mode is forced to "madvise" so that the exec path runs on any glibc >= 2.35.
PROBE = ("import os, sys; print('ran', flush=True); "
         "from tagger_jax import huge_pages; huge_pages.thp_mode = lambda *a: 'madvise'; "
         "{before}huge_pages.reexec_with_huge_pages(); "
         "print(os.getpid(), os.environ.get('GLIBC_TUNABLES'), sys.argv[1:])")


def run_probe(env_tunables: str | None, before: str = "") -> tuple[list[str], list[str]]:
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    if env_tunables is not None:
        env["GLIBC_TUNABLES"] = env_tunables
    proc = subprocess.Popen([sys.executable, "-c", PROBE.format(before=before), "--flag", "a b"],
                            env=env, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0
    lines = out.splitlines()
    return lines[:-1], lines[-1].split(" ", 2) + [str(proc.pid)]


def test_reexec_sets_the_tunable_once_and_keeps_the_command_line():
    before, (pid, tunables, argv, child_pid) = run_probe(None)
    wanted = huge_pages.should_reexec({}, platform.libc_ver(), "madvise")
    assert argv == "['--flag', 'a b']"
    assert pid == child_pid  # the same process, re-executed, not a child
    if wanted:  # this machine: glibc >= 2.35 with transparent huge pages on "madvise"
        assert tunables == huge_pages.TUNABLE
        assert before == ["ran", "ran"]  # what precedes the call runs again, once
    else:
        assert tunables == "None" and before == ["ran"]


def test_reexec_keeps_the_users_tunables():
    before, (_, tunables, _, _) = run_probe("glibc.malloc.hugetlb=0")
    assert tunables == "glibc.malloc.hugetlb=0" and before == ["ran"]


def test_a_script_hosted_by_another_program_is_not_reexecuted():
    """runpy or IPython's %run set sys.argv to the script's own arguments: the host's command
    line (sys.orig_argv) does not end with them, and re-executing would replace the host."""
    before, (_, tunables, argv, _) = run_probe(None, before="sys.argv = ['script.py', '-x']; ")
    assert tunables == "None" and before == ["ran"] and argv == "['-x']"


class Reexecuted(Exception):
    pass


def _refuse(*_):
    raise Reexecuted


@pytest.mark.parametrize("script", ["train.py", "evaluate.py", "explain.py"])
def test_scripts_reexec_before_their_main(monkeypatch, script):
    from tagger_jax import xla_cpu

    monkeypatch.setattr(xla_cpu, "use_for_inference", lambda: None)  # keeps XLA_FLAGS as is
    monkeypatch.setattr(huge_pages, "reexec_with_huge_pages", _refuse)
    monkeypatch.setattr(sys, "argv", [script, "--no-such-flag"])
    with pytest.raises(Reexecuted):  # reached before main parses (and refuses) the flag
        runpy.run_path(str(ROOT / script), run_name="__main__")


def test_console_script_reexecs_before_main(monkeypatch):
    calls = []
    monkeypatch.setattr(sys, "argv", ["tagger-jax", "train"])  # not pytest's own arguments
    monkeypatch.setattr(huge_pages, "reexec_with_huge_pages", lambda: calls.append("reexec"))
    monkeypatch.setattr(cli, "main", lambda argv=None, owns_process=False: calls.append(
        "main" if owns_process else "main, not owning the process") or 0)
    assert cli.console() == 0 and calls == ["reexec", "main"]
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'tagger-jax = "tagger_jax.cli:console"' in pyproject

