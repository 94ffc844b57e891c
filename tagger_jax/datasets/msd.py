"""`msd`: the Million Song Dataset 50-tag subset with the authors' split, from the user's audio.

Manual download:
  1. The split and tag files of Won et al. (from `split/msd/` of
     https://github.com/minzwon/sota-music-tagging-models, which follows Choi et al.'s split):
     `filtered_list_train.cP`, `filtered_list_test.cP`, `msd_id_to_tag_vector.cP`,
     `MSD_id_to_7D_id.pkl`, `7D_id_to_path.pkl`, `50tagList.txt`.
  2. The 30 s 7digital preview clips, which cannot be redistributed: obtain them yourself, keeping
     the relative paths of `7D_id_to_path.pkl` (e.g. `8/9/8947470.clip.mp3`).
  3. Layout:
         MANUAL_DIR/
           filtered_list_train.cP  filtered_list_test.cP  msd_id_to_tag_vector.cP
           MSD_id_to_7D_id.pkl  7D_id_to_path.pkl  50tagList.txt
           audio/0/0/....clip.mp3 ...      (or the digit folders directly in MANUAL_DIR)
  4. Build:
         tagger-jax build-dataset msd --data-dir ~/tensorflow_datasets --manual-dir MANUAL_DIR

Split (the authors' rule): the first 201,680 ids of the train list are train, the remaining
11,774 validation; the test list (28,435 ids) is test. The pickles come from Python 2 and are read
with a restricted unpickler that accepts only plain containers, strings, numbers and NumPy arrays
of them: a pickle that names any other class or function is refused, never executed. Clips whose
audio is missing or undecodable are skipped and listed in `skipped_files.tsv`.
"""
from __future__ import annotations

import _compat_pickle
import dataclasses
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from tagger_jax import errors
from tagger_jax.tags import read_tag_list
from tagger_jax.datasets._common import (TaggingBuilder, TaggingConfig, check_audio_folder,
                                         manual_hint, utf8_error)

NUM_TRAIN = 201680
FILES = {
    "train": "filtered_list_train.cP", "test": "filtered_list_test.cP",
    "tags": "msd_id_to_tag_vector.cP", "msd_to_7d": "MSD_id_to_7D_id.pkl",
    "7d_to_path": "7D_id_to_path.pkl", "tag_list": "50tagList.txt",
}

_ALLOWED = {
    ("builtins", name) for name in (
        "list", "dict", "tuple", "set", "frozenset", "str", "bytes", "bytearray", "int",
        "float", "complex", "bool")
} | {
    (module, name)
    for module in ("numpy.core.multiarray", "numpy._core.multiarray")
    for name in ("_reconstruct", "scalar")
} | {
    # protocol 5 (Python 3.8+'s default for arrays of numpy >= 1.16): the array from its bytes
    (module, "_frombuffer") for module in ("numpy.core.numeric", "numpy._core.numeric")
} | {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

INSTRUCTIONS = __doc__.split("Manual download:")[1].split("Split (")[0]


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler for data files: plain containers, strings, numbers and NumPy arrays only.

    Any other global a pickle names (a class, a function such as `os.system`) raises
    `pickle.UnpicklingError` before anything is called. NumPy array reconstruction is allowed
    because the tag-vector pickles hold arrays; their contents go through this same check.
    """

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _compat_pickle.NAME_MAPPING:  # Python 2 names (__builtin__.set)
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(
                f"refusing to load {module}.{name}: only plain containers, strings, numbers and "
                "NumPy arrays are allowed in data pickles")
        return super().find_class(module, name)


def safe_load_pickle(path: str | Path) -> Any:
    """Loads a (Python 2 or 3) data pickle with `RestrictedUnpickler`; errors name the file."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return RestrictedUnpickler(f, encoding="latin1").load()
    except pickle.UnpicklingError as e:
        raise pickle.UnpicklingError(f"{path}: {e}") from None
    except (EOFError, ValueError, TypeError, IndexError, KeyError, AttributeError) as e:
        raise ValueError(f"{path}: not a readable pickle ({type(e).__name__}: {e})") from None


def _ids(value: Any, path: Path) -> list[str]:
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, (str, bytes)) for v in value):
        raise ValueError(f"{path}: expected a list of MSD track ids, got {type(value).__name__}")
    return [v.decode() if isinstance(v, bytes) else v for v in value]


def _lookup(mapping: dict, key: Any) -> Any:
    """mapping[key], trying the key as str, int and bytes too (7digital ids appear as str and
    int; a pickle re-saved after loading with `encoding="bytes"`, as the authors' loader reads
    them, has bytes keys)."""
    if key is None:
        return None
    key = key.decode("latin1") if isinstance(key, bytes) else key
    for k in (key, str(key), int(key) if str(key).isdigit() else None,
              str(key).encode("latin1")):
        if k is not None and k in mapping:
            return mapping[k]
    return None


def find_audio(root: Path, rel: str) -> Path | None:
    for base in (root / "audio", root):
        if (base / rel).is_file():
            return base / rel
    return None


@dataclasses.dataclass(eq=False)
class MsdConfig(TaggingConfig):
    """`num_train`: ids of the train list used for training; the rest is validation."""

    num_train: int = NUM_TRAIN


class Msd(TaggingBuilder):
    """Million Song Dataset (Bertin-Mahieux et al., 2011), 50 Last.fm tags, authors' split."""

    name = "msd"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    NUM_TAGS = 50
    BUILDER_CONFIGS = [
        MsdConfig(name="default", description="Log-mel spectrograms."),
        MsdConfig(name="waveform", waveform=True,
                  description="Log-mel plus the 16 kHz waveform (lee_won)."),
    ]
    DEFAULT_CONFIG_NAME = "default"
    HOMEPAGE = "http://millionsongdataset.com/"
    MANUAL_DOWNLOAD_INSTRUCTIONS = INSTRUCTIONS
    MANUAL_FILES = f"{', '.join(FILES.values())} and the preview clips under audio/"

    def _check_files(self, root: Path) -> None:
        missing = [v for v in FILES.values() if not (root / v).exists()]
        if missing:
            raise FileNotFoundError(f"{root}: missing {len(missing)} of the {len(FILES)} split "
                                    f"and tag files: {', '.join(missing)}. "
                                    f"{manual_hint(self.name)}")

    def preflight(self, manual_dir: Path | None = None) -> None:
        """Before the build starts: the six split and tag files (every missing one at once),
        then an audio folder, `audio/` or the previews' one-digit folders (0-9, as
        `7D_id_to_path.pkl` names them) in the manual directory; without one every clip was
        skipped, one warning each, after the whole train split."""
        if manual_dir is None:
            return
        root = Path(manual_dir)
        self._check_files(root)
        check_audio_folder(root, [str(d) for d in range(10)],
                           f"the 7digital previews go in audio/0/ ... audio/9/ (the paths of "
                           f"{FILES['7d_to_path']}, e.g. 8/9/8947470.clip.mp3)", self.name)

    def _split_generators(self, dl_manager):
        root = Path(dl_manager.manual_dir)
        paths = {k: root / v for k, v in FILES.items()}
        self._check_files(root)
        try:
            tags = read_tag_list(paths["tag_list"])
        except UnicodeDecodeError as e:
            raise utf8_error(paths["tag_list"], e) from None
        self._set_tags(tags, source=paths["tag_list"])
        train_ids = _ids(safe_load_pickle(paths["train"]), paths["train"])
        num_train = self.builder_config.num_train
        if num_train >= len(train_ids):
            raise errors.ConfigError(
                f"{self.name}/{self.builder_config.name}: num_train={num_train} leaves no "
                f"validation clips: {paths['train']} lists {len(train_ids)} ids (the first "
                "num_train are train, the rest validation); choose a smaller num_train")
        lists = {"train": train_ids[:num_train],
                 "validation": train_ids[num_train:],
                 "test": _ids(safe_load_pickle(paths["test"]), paths["test"])}
        vectors = safe_load_pickle(paths["tags"])
        msd_to_7d = safe_load_pickle(paths["msd_to_7d"])
        id7d_to_path = safe_load_pickle(paths["7d_to_path"])
        for key, value in (("tags", vectors), ("msd_to_7d", msd_to_7d),
                           ("7d_to_path", id7d_to_path)):
            if not isinstance(value, dict):
                raise ValueError(f"{paths[key]}: expected a dictionary, got {type(value).__name__}")
        items = {}
        for split, ids in lists.items():
            items[split] = []
            for msd_id in ids:
                item: dict[str, Any] = {"key": msd_id, "clip_id": msd_id, "path": ""}
                vector = _lookup(vectors, msd_id)
                rel = _lookup(id7d_to_path, _lookup(msd_to_7d, msd_id))
                rel = rel.decode("latin1") if isinstance(rel, bytes) else rel
                if vector is None:
                    item["error"] = f"{msd_id}: no tag vector in {FILES['tags']}"
                    item["tags"] = np.zeros(len(tags), np.uint8)
                else:
                    vector = np.asarray(vector).reshape(-1)
                    if vector.shape[0] != len(tags):
                        raise ValueError(f"{paths['tags']}: {msd_id} has {vector.shape[0]} tags, "
                                         f"{FILES['tag_list']} lists {len(tags)}")
                    item["tags"] = (vector.astype(np.float64) > 0).astype(np.uint8)
                if rel is None:
                    item.setdefault("error", f"{msd_id}: no audio path in {FILES['msd_to_7d']} / "
                                             f"{FILES['7d_to_path']}")
                else:
                    item["path"] = str(rel)
                    audio = find_audio(root, str(rel))
                    if audio is None:
                        item.setdefault("error", f"{root / 'audio' / str(rel)}: file not found")
                    else:
                        item["file"] = str(audio)
                items[split].append(item)
        self._note("source", "minzwon/sota-music-tagging-models split/msd")
        self._note_manual_dir(root)
        return {s: self._generate_examples(s, items[s]) for s in lists}

    def _generate_examples(self, split: str, items: list[dict]):
        yield from self._extract_audio(split, items)
