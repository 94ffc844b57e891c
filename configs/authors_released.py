"""The variant of the authors' released checkpoint (models/ponswon.pth) and visualisation code."""
from tagger_jax.config_base import base_config


def get_config():
    config = base_config()  # every field is documented in tagger_jax/config_base.py
    config.model.architecture = "pons_won"  # the paper's model
    config.model.conv_channels = 8  # the released checkpoint is the narrow variant (232 channels)
    config.model.positions = "learned"  # learned table + LayerNorm + dropout
    config.model.max_positions = 271  # the released table has 271 rows; 257 are used
    config.data.name = "magnatagatune"  # it was trained on MagnaTagATune top-50
    return config
