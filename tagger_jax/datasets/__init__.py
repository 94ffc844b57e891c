"""TFDS builders for music tagging; importing this package registers them with TFDS.

Builders (one module each; its docstring gives the manual download steps, layout and command):
  - `synthetic_tags`: clips synthesised by `tagger_jax.synth`, exact tags, no download (default).
  - `soundfont_tags`: multi-part scores rendered with General MIDI SoundFonts from PyPI packages,
    exact frame-level activity, extra splits `test_<bank>` rendered with banks never trained on.
  - `magnatagatune`: MagnaTagATune top-50, the authors' split by folder.
  - `mtg_jamendo`: MTG-Jamendo `autotagging_top50tags`, official splits 0-4, full tracks.
  - `msd`: the Million Song Dataset 50-tag subset with the authors' split files.
  - `audio_folder`: the user's own audio files + CSV of tags.

THE CONTRACT (the input pipeline and the trainer rely on it):
  - Every builder is a `tfds.core.GeneratorBasedBuilder` writing array_record files, read with
    `tfds.data_source` / `builder.as_data_source(split)` (no TensorFlow needed), in generation
    order (no shuffling at build time: record i is the i-th clip of the source list).
  - Splits "train", "validation", "test" for every dataset; some have extra named splits
    (`soundfont_tags`: test_<bank>; `audio_folder`: other values of the CSV's split column).
  - Per example:
      "mel":      float16 (96, T) log-mel from `tagger_jax.audio.log_mel` with the authors'
                  settings (16 kHz, n_fft 512, hop 256, 96 mels, amplitude_to_db on the power mel;
                  `metadata["features"]`). float16 halves the bytes; the values are dB in about
                  [-100, 100], where float16 keeps a resolution of 0.06 dB or better.
      "tags":     uint8 (num_tags,) multi-hot, in the order of `tag_names(...)`
                  (`audio_folder`'s length is only known at build time; its shape is (None,)).
      "clip_id":  text (bytes when read back), "path": text (source file, relative to the
                  manual directory), "duration": float32 seconds of decoded audio.
      "audio":    float32 (samples,) 16 kHz waveform, only in `waveform` configs (lee_won).
      "tag_mask": uint8 (num_tags, T), only in `synthetic_tags/segments` and `soundfont_tags`:
                  where each tag sounds, aligned with the mel frames.
  - Tag names (model output order) are stored in the dataset metadata (`metadata.json`):
    `tag_names(name_or_builder, data_dir=...)`. Also stored: `features` (the feature settings),
    `skipped` / `num_skipped` (files that could not be used, per split, also written to
    `skipped_files.tsv` in the dataset directory) and builder-specific counts.
  - `load_split(name, split, data_dir, builder_config=None) -> (source, tags)`.
  - `ensure_built(name, data_dir, builder_config=None)` builds `synthetic_tags` on first use.
  - `with reading(source):` a run that reads a split (`load_split`'s source) holds its build's
    readers' lock, so that `build(..., overwrite=True)` refuses instead of deleting the build
    under the run (training, evaluate, embed and explain --dataset hold it).
  - Building runs decoding / synthesis in spawned worker processes (`num_workers`, default all
    cores), in order, so the result does not depend on the number of workers.
"""
from __future__ import annotations

from tagger_jax.datasets._api import (SELF_CONTAINED, MissingSplitError, audio_warnings, build,
                                      build_report, ensure_built, get_builder, load_split,
                                      reading, report_path, split_sizes, tag_names, untrained_tags,
                                      warnings_path, warnings_summary)
from tagger_jax.datasets._common import SPLITS, TaggingBuilder, TaggingConfig
from tagger_jax.datasets.audio_folder import AudioFolder, AudioFolderConfig
from tagger_jax.datasets.magnatagatune import Magnatagatune, MagnatagatuneConfig
from tagger_jax.datasets.msd import Msd, MsdConfig
from tagger_jax.datasets.mtg_jamendo import MtgJamendo, MtgJamendoConfig
from tagger_jax.datasets.soundfont_tags import SoundfontConfig, SoundfontTags
from tagger_jax.datasets.synthetic_tags import SyntheticConfig, SyntheticTags
from tagger_jax.dataset_names import BUILDER_NAMES

BUILDERS = {b.name: b for b in (SyntheticTags, SoundfontTags, Magnatagatune, MtgJamendo, Msd,
                                AudioFolder)}
if tuple(BUILDERS) != BUILDER_NAMES:  # the names --help shows without importing TFDS
    raise ImportError(f"tagger_jax.dataset_names.BUILDER_NAMES {BUILDER_NAMES} != {tuple(BUILDERS)}")

__all__ = [
    "BUILDERS", "SPLITS", "SELF_CONTAINED", "MissingSplitError", "TaggingBuilder", "TaggingConfig",
    "SyntheticTags", "SyntheticConfig", "SoundfontTags", "SoundfontConfig", "Magnatagatune", "MagnatagatuneConfig", "MtgJamendo",
    "MtgJamendoConfig", "Msd", "MsdConfig", "AudioFolder", "AudioFolderConfig",
    "get_builder", "build", "ensure_built", "reading", "tag_names", "load_split", "build_report",
    "report_path", "audio_warnings", "untrained_tags", "warnings_path", "warnings_summary", "split_sizes",
]
