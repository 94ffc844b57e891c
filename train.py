#!/usr/bin/env python
"""Trains a tagger: python train.py --config configs/X.py --workdir DIR [--config.train.batch_size=64].

A thin absl entry point; the work is `tagger_jax.train_lib.train_and_evaluate(config, workdir)`
(the same as `tagger-jax train`). Rerunning the same command in the same workdir resumes.
"""
from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file defining get_config().",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and the exported model.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not FLAGS["verbosity"].present:  # orbax and tfds log every file at INFO level
        logging.set_verbosity(logging.WARNING)
    from tagger_jax.commands.train import run_training

    return run_training(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
    app.run(main)
