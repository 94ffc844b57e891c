#!/usr/bin/env python
"""Evaluates a model on a dataset split; the same as `tagger-jax evaluate` (see --help)."""
import sys

from tagger_jax.commands.evaluate import main
from tagger_jax.huge_pages import reexec_with_huge_pages

if __name__ == "__main__":
    reexec_with_huge_pages()  # tagger_jax/huge_pages.py: why
    sys.exit(main())
