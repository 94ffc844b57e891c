"""The CPU main job: the small pons_won of configs/synthetic_cpu.py on sampled instruments.

Trains on `soundfont_tags` (General MIDI scores rendered with the `merlin` bank, built on first
use) and tests on the same test scores rendered with `timgm6mb`, a bank it never hears, beside a
logistic-regression baseline fitted on the same training split. Model, optimiser and 16-epoch
schedule are synthetic_cpu's; what this data changed, each by an ablation on it
(docs/training.md, "The CPU main job"): crops are labelled with the instruments that sound in
them (the score's exact activity), not with the whole clip's tags, and a frame-level loss on that
activity (a linear head on every encoder input position, not used at inference) trains the
front-end far faster.
"""
import importlib.util
from pathlib import Path


def _synthetic_config():
    """configs/synthetic_cpu.py's config (loaded by path: configs/ is not a package)."""
    spec = importlib.util.spec_from_file_location(
        "synthetic_cpu", Path(__file__).with_name("synthetic_cpu.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def get_config():
    config = _synthetic_config()  # every field is documented in tagger_jax/config_base.py
    config.data.name = "soundfont_tags"  # rendered with SoundFonts from PyPI, built on first use
    config.data.builder_config = ""  # default: train on merlin, unseen split test_timgm6mb
    config.data.extra_test_splits = ("test_timgm6mb",)  # the same test scores, a bank never heard
    config.data.crop_labels = "activity"  # a crop is labelled with the instruments sounding in it
    config.model.frame_head = True  # a training aid: tag logits per position, against the activity
    config.train.frame_loss_weight = 1.0  # frame loss weight (3.0: within noise of 1.0 at 16 epochs)
    config.train.test_baseline = True  # the logistic-regression floor beside every test number
    return config
