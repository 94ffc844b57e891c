#!/usr/bin/env python
"""Evaluates a model on a dataset split; the same as `tagger-jax evaluate` (see --help)."""
import sys

from tagger_jax.commands.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
