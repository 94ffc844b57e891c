#!/usr/bin/env python
"""Explains a model's tags for audio files, spectrograms or a dataset split; the same as
`tagger-jax explain` (see --help)."""
import sys

from tagger_jax import errors
from tagger_jax.commands.explain import main
from tagger_jax.huge_pages import reexec_with_huge_pages
from tagger_jax.xla_cpu import use_for_inference

if __name__ == "__main__":
    errors.defer_interrupts()  # Ctrl-C before the command starts: tagger_jax/errors.py
    use_for_inference()  # tagger_jax/xla_cpu.py: why
    reexec_with_huge_pages()  # tagger_jax/huge_pages.py: why
    sys.exit(main(owns_process=True))
