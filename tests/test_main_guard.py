"""Scripts that would make spawned workers run them again are refused before a worker starts.

A new user's trial called `train_lib.train_and_evaluate` at the top level of a script: each build
worker imported the script, ran the call again, died on the workdir's lock, and
`multiprocessing.Pool` started new ones without end while the parent waited forever.
"""
import subprocess
import sys
import textwrap

import pytest

from tagger_jax import main_guard

BUILD = """
from tagger_jax import datasets
from tagger_jax.datasets import SyntheticConfig
config = SyntheticConfig(name="tiny", num_train=4, num_validation=2, num_test=2, duration_s=4.5)
"""


def run_script(tmp_path, body: str, timeout: float = 240) -> subprocess.CompletedProcess:
    script = tmp_path / "user_script.py"
    script.write_text(textwrap.dedent(body))
    return subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=timeout, cwd=tmp_path)


def test_guarded_lines_reads_both_spellings():
    """Either way round, and as a term of an `and` (a verifying user's `and len(sys.argv)`
    guard was refused); not under `or`, whose body a worker may run."""
    source = textwrap.dedent("""\
        import os
        def f():
            pass
        if __name__ == "__main__":
            f()
            f()
        if '__main__' == __name__:
            f()
        if __name__ != "__main__":
            f()
        if __name__ == "__main__" and len(os.sys.argv) > 0:
            f()
        if __name__ == "__main__" or os.sep:
            f()
    """)
    assert main_guard.guarded_lines(source) == [(5, 6), (8, 8), (12, 12)]


def test_an_unguarded_build_is_refused_in_one_line_before_any_worker(tmp_path):
    """The top-level call with 2 build workers stops at once with the script's line and the two
    ways out; nothing is built. (Before: the workers re-ran the script without end.)"""
    out = run_script(tmp_path, BUILD + "datasets.ensure_built('synthetic_tags', 'tfds', config, "
                     "num_workers=2)\nprint('BUILT')\n", timeout=120)
    assert out.returncode != 0
    assert "BUILT" not in out.stdout
    last = out.stderr.strip().splitlines()[-1]
    assert "UnguardedMainError" in last and "user_script.py:5:" in last, out.stderr[-2000:]
    assert 'if __name__ == "__main__":' in last and "num_workers=1" in last
    assert out.stderr.count("Traceback") == 1  # no worker ever started


def test_a_guarded_build_and_a_one_worker_build_run(tmp_path):
    guarded = BUILD + textwrap.dedent("""
        if __name__ == "__main__":
            b = datasets.ensure_built("synthetic_tags", "tfds", config, num_workers=2)
            print("BUILT", b.info.splits["train"].num_examples)
    """)
    out = run_script(tmp_path, guarded)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "BUILT 4" in out.stdout
    inline = BUILD + "b = datasets.ensure_built('synthetic_tags', 'tfds1', config, num_workers=1)"
    out = run_script(tmp_path, inline + "\nprint('BUILT', b.info.splits['train'].num_examples)\n")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "BUILT 4" in out.stdout


def test_input_workers_are_checked_too(tmp_path):
    """grain's input workers are spawned as well: the same refusal, naming data.num_workers."""
    out = run_script(tmp_path, """
        from tagger_jax import input_pipeline
        input_pipeline._prefetch(None, num_workers=1, worker_buffer_size=1, read_threads=0)
    """, timeout=120)
    last = out.stderr.strip().splitlines()[-1]
    assert "user_script.py:3:" in last and "data.num_workers = 0" in last, out.stderr[-2000:]


@pytest.mark.parametrize("where", ["-c", "function"])
def test_no_check_where_workers_do_not_rerun_a_script_line(tmp_path, where):
    """`python -c` has no main file; a call from a function run under the guard is fine."""
    if where == "-c":
        out = subprocess.run([sys.executable, "-c", "from tagger_jax import main_guard; "
                              "main_guard.check('w', 'x'); print('OK')"],
                             capture_output=True, text=True, timeout=60)
    else:
        out = run_script(tmp_path, """
            from tagger_jax import main_guard
            def main():
                main_guard.check("w", "x")
                print("OK")
            if __name__ == "__main__":
                main()
        """, timeout=60)
    assert out.returncode == 0 and "OK" in out.stdout, out.stderr[-2000:]
