"""The CPU main job's model and schedule on `soundfont_tags`: sampled General MIDI instruments.

Trains on the `merlin` bank; `evaluate --split test_timgm6mb` scores the bank it never heard.
Same small pons_won and schedule as configs/synthetic_cpu.py (docs/training.md, "Sampled
instruments" records what it measured on this data and what it misses).
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
    config.train.test_baseline = True  # the logistic-regression floor beside every test number
    return config
