"""The paper's model (pons_won, c = 16, sinusoidal positions) with the authors' MTAT protocol.

The values live in `tagger_jax.config_base.paper_mtat_config` (commented field by field) so that
the installed package can rebuild this model without this file.
"""
from tagger_jax.config_base import paper_mtat_config


def get_config():
    return paper_mtat_config()
