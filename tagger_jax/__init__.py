"""tagger-jax: the self-attention music tagger of Won, Chun and Serra (2019) in JAX/Flax."""

__version__ = "0.1.0"

# Registers the TFDS builders (synthetic_tags, magnatagatune, mtg_jamendo, msd, audio_folder), so
# `tfds.builder(name)` / `tfds.data_source(name)` work after `import tagger_jax`.
try:
    from tagger_jax import datasets  # noqa: E402,F401
except ModuleNotFoundError as _e:  # the model and train step also run without the data stack
    if _e.name not in ("tensorflow_datasets", "grain", "librosa", "ml_collections", "soundfile",
                       "array_record"):
        raise
