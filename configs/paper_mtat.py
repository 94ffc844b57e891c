"""The paper's model (pons_won, c = 16, sinusoidal positions) with the authors' MTAT protocol."""
from tagger_jax.config_base import base_config


def get_config():
    config = base_config()  # every field is documented in tagger_jax/config_base.py
    config.model.architecture = "pons_won"  # the paper's model: Pons front-end + Transformer
    config.model.conv_channels = 16  # training code's width: 6,882,452 parameters
    config.model.positions = "sinusoidal"  # training code's fixed table, no LayerNorm
    config.data.name = "magnatagatune"  # MagnaTagATune top-50, built with `tagger-jax build-dataset`
    config.train.optimizer = "authors"  # Adam 1e-4, then SGD with drops on validation plateaus
    config.train.batch_size = 16  # the authors' batch
    return config
