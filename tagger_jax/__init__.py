"""tagger-jax: the self-attention music tagger of Won, Chun and Serra (2019) in JAX/Flax.

Importing the package is cheap: nothing heavy (JAX, TensorFlow Datasets) is imported until it is
used. The TFDS builders (`tagger_jax.dataset_names.BUILDER_NAMES`) are
registered when `tagger_jax.datasets` is first imported, which every function naming a dataset
does; call `import tagger_jax.datasets` yourself before `tfds.builder("synthetic_tags")`.
"""

__version__ = "0.1.0"
