"""The variant of the authors' released checkpoint (models/ponswon.pth) and visualisation code:
c = 8, learned positions (271 rows) + LayerNorm. Values: `tagger_jax.config_base`, commented."""
from tagger_jax.config_base import authors_released_config


def get_config():
    return authors_released_config()
