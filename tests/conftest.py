"""Suite-wide setup."""
from __future__ import annotations


def pytest_sessionstart(session) -> None:
    """Fills librosa's numba cache in this process, under the project's lock, before any test
    starts processes that use librosa (tagger_jax/librosa_import.py says why)."""
    from tagger_jax.librosa_import import import_librosa

    import_librosa()


def pytest_collection_modifyitems(session, config, items) -> None:
    """Moves the modules holding a test marked `slow` to the front, keeping the order otherwise.

    The workers of `-n 2 --dist loadfile --no-loadscope-reorder` (pyproject.toml) take whole
    modules in collection order, so the longest start first and the short ones fill in around
    them, instead of one long module running alone at the end. Every worker collects the same
    order (it depends on the items only).
    """
    slow = {item.module.__name__ for item in items
            if item.get_closest_marker("slow") is not None and getattr(item, "module", None)}
    items.sort(key=lambda item: getattr(item, "module", None) is None
               or item.module.__name__ not in slow)
