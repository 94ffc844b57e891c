"""tagger-jax: the self-attention music tagger of Won, Chun and Serra (2019) in JAX/Flax."""

__version__ = "0.1.0"
