#!/usr/bin/env python
"""Evaluates a model on a dataset split; the same as `tagger-jax evaluate` (see --help)."""
import sys

from tagger_jax.commands.evaluate import main
from tagger_jax.huge_pages import reexec_with_huge_pages
from tagger_jax.xla_cpu import use_for_inference

if __name__ == "__main__":
    use_for_inference()  # tagger_jax/xla_cpu.py: why
    reexec_with_huge_pages()  # tagger_jax/huge_pages.py: why
    sys.exit(main())
