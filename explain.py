#!/usr/bin/env python
"""Explains a model's tags for audio files, spectrograms or a dataset split; the same as
`tagger-jax explain` (see --help)."""
import sys

from tagger_jax.commands.explain import main

if __name__ == "__main__":
    sys.exit(main())
