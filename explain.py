#!/usr/bin/env python
"""Explains a model's tags for audio files, spectrograms or a dataset split; the same as
`tagger-jax explain` (see --help)."""
import sys

from tagger_jax.commands.explain import main
from tagger_jax.huge_pages import reexec_with_huge_pages

if __name__ == "__main__":
    reexec_with_huge_pages()  # tagger_jax/huge_pages.py: why
    sys.exit(main())
