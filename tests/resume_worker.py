"""One training run in its own process, for tests/test_resume.py to interrupt and restart.

Usage: python tests/resume_worker.py WORKDIR

Trains the tiny model on in-memory toy data with the authors' plateau schedule (so optimizer
switches and best-model reloads happen during the run) and prints the summary as JSON.
"""
from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tagger_jax import train_lib  # noqa: E402
from train_helpers import tiny_config, toy_data  # noqa: E402


def config():
    c = tiny_config(optimizer="authors", learning_rate=3e-3, sgd_learning_rates=(3e-3, 1e-3, 3e-4),
                    plateau_patience=1, num_epochs=4, checkpoint_every_steps=3,
                    test_after_training=False)
    return c


if __name__ == "__main__":
    c = config()
    summary = train_lib.train_and_evaluate(c, sys.argv[1], toy_data(c))
    print("SUMMARY " + json.dumps(summary), flush=True)
