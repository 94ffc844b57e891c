"""configs/soundfont_cpu.py plus the log-mel augmentations of `tagger_jax.augment`
(docs/training.md, "Augmentations": why each range); the frame-level loss's targets move with
the time stretch and are unioned by mixing."""
from pathlib import Path

import ml_collections

from tagger_jax.config_base import config_file


def get_config():
    # configs/soundfont_cpu.py's config; every field is documented in tagger_jax/config_base.py
    config = config_file(Path(__file__).with_name("soundfont_cpu.py"))
    config.data.augment = ml_collections.ConfigDict({  # fields of augment.AugmentParams
        "p_stretch": 0.5, "stretch": 1.05,  # 54-76 / 140-190 BPM stay clear of 80-132
        "p_pitch": 0.5, "pitch_bins": 2,  # about +-2 semitones
        "p_gain": 1.0, "gain_db": 3.0,  # loud / quiet classes stay apart
        "p_eq": 0.5, "eq_db": 6.0,  # bank timbre differences
        "p_reverb": 0.3, "p_noise": 0.3,  # room and noise
        "p_mix": 0.3})  # two clips, instrument labels unioned
    config.data.augment_mix_exclude = ("fast", "slow", "loud", "quiet")  # clip-wide tags
    config.train.num_epochs = 16  # as measured (the main job's schedule before it moved to 32)
    config.train.eval_every_epochs = 16  # validate once, at the end, as measured
    return config
