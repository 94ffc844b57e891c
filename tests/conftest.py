"""Suite-wide setup."""
from __future__ import annotations


def pytest_sessionstart(session) -> None:
    """Fills librosa's numba cache in this process, under the project's lock, before any test
    starts processes that use librosa (tagger_jax/librosa_import.py says why)."""
    from tagger_jax.librosa_import import import_librosa

    import_librosa()
