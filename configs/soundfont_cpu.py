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


def get_config(variant: str = ""):
    """`variant` (after ':' in --config configs/soundfont_cpu.py:augment): "" or "augment"."""
    import ml_collections

    config = _synthetic_config()  # every field is documented in tagger_jax/config_base.py
    config.data.name = "soundfont_tags"  # rendered with SoundFonts from PyPI, built on first use
    config.data.builder_config = ""  # default: train on merlin, unseen split test_timgm6mb
    if variant == "augment":  # fields of tagger_jax.augment.AugmentParams
        config.data.augment = ml_collections.ConfigDict({
            "p_stretch": 0.5, "stretch": 1.08,  # tempo classes stay apart
            "p_pitch": 0.5, "pitch_bins": 2,  # about +-2 semitones
            "p_gain": 1.0, "gain_db": 3.0,  # loud / quiet classes stay apart
            "p_eq": 0.5, "eq_db": 6.0,  # bank timbre differences
            "p_reverb": 0.3, "p_noise": 0.3,  # room and noise
            "p_mix": 0.3})  # two clips, instrument labels unioned
        config.data.augment_mix_exclude = ("fast", "slow", "loud", "quiet")  # clip-wide tags
    elif variant:
        raise ValueError(f"unknown variant {variant!r} (known: augment)")
    return config
