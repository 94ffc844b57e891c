"""The names of the TFDS builders in `tagger_jax.datasets`, importable without TFDS (for --help).

`tagger_jax.datasets.BUILDERS` is keyed by exactly these names (checked when it is imported).
"""

BUILDER_NAMES: tuple[str, ...] = ("synthetic_tags", "soundfont_tags", "magnatagatune",
                                  "mtg_jamendo", "msd", "audio_folder")
