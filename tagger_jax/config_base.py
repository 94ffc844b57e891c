"""The full set of config fields, with the paper's values; files in `configs/` override them.

Configs are ml_collections ConfigDicts, loaded from Python files by `--config path.py`. A trained
or imported checkpoint stores its resolved config as JSON, so inference rebuilds the same model.

Every default lives here, once, with its comment on the same line: stored configs (a workdir's
`config.json`, a model directory's `tagger.json`) are merged over `base_config()` when loaded
(`merge_over_base`), so code reads `config.section.field` and never repeats a default, and
`field_docs()` (`tagger-jax train --list-config`) reads the comments from this file's source.
"""
from __future__ import annotations

import ast
import importlib.util
import inspect
import io
import os
import tokenize
from pathlib import Path
from typing import Any, Mapping, NamedTuple

import ml_collections


def base_config() -> ml_collections.ConfigDict:
    """The paper's model and the authors' MagnaTagATune protocol."""
    c = ml_collections.ConfigDict()

    c.model = m = ml_collections.ConfigDict()
    m.architecture = "pons_won"  # "pons_won" (paper), "pons_pons" (conv back-end) or "lee_won" (waveform)
    m.conv_channels = 16  # c: front-end width; branches have c..8c channels, 29c in all
    m.attention_channels = 512  # Transformer width (the 1x1 conv's output channels)
    m.attention_layers = 2  # number of encoder layers
    m.attention_heads = 8  # heads per layer (512 / 8 = 64 channels each)
    m.intermediate = 2048  # feed-forward width inside each layer
    m.attention_dropout = 0.4  # dropout on attention probabilities (authors' script: 0.4)
    m.hidden_dropout = 0.4  # dropout after attention/feed-forward outputs (authors' script: 0.4)
    m.classifier_dropout = 0.5  # dropout before the final dense layer
    m.cls_token = "fixed"  # "fixed": the authors' np.random.seed(0) vector; "learned": a parameter
    m.positions = "sinusoidal"  # "sinusoidal" (training code) or "learned" + LayerNorm (released)
    m.max_positions = 271  # rows of a learned position table (>= steps + 1)
    m.timbre_norm = "none"  # "none" (authors'), "frame_peak" or "chunk_peak": the timbre (vertical) branches read the log-mel minus its maximum per frame / per chunk (level-invariant)
    m.tempo_features = "none"  # "none" (authors'), "onset_autocorrelation" or "onset_autocorrelation_bands": a front-end branch reading the chunk's onset autocorrelation (whole spectrum; or it and 3 mel-band ranges) for tempo
    m.tempo_hidden = 0  # units of a hidden layer in the tempo branch (0: a single dense layer); needs tempo_features
    m.frame_head = False  # training aid (not the paper's): a tag classifier on every position (of the sequence frame_head_layer names), for train.frame_loss_weight
    m.frame_head_layer = 0  # the sequence the frame head reads: 0 the encoder's input, k >= 1 encoder layer k-1's output (its positions, not [CLS])
    m.frame_head_readout = "linear"  # the frame head's classifier: "linear" (its own) or "tag_head" (the [CLS] tag head's pooler and classifier at every position; no parameters of its own)
    m.dtype = "float32"  # compute dtype: "float32" or "bfloat16" (parameters stay float32)

    c.features = f = ml_collections.ConfigDict()
    f.sample_rate = 16000  # audio is decoded to mono and resampled to this rate
    f.n_fft = 512  # STFT size (Hann window, centred frames)
    f.hop_length = 256  # STFT hop: 16 ms frames
    f.n_mels = 96  # mel bands (Slaney scale, librosa defaults)
    f.log_scale = "amplitude_to_db"  # authors' quirk on the power mel; or "power_to_db"
    f.stft_pad_mode = "constant"  # STFT edge padding: "constant" (librosa>=0.10) or "reflect" (authors)
    f.chunk_frames = 256  # frames per model input chunk (about 4.1 s)
    f.eval_chunks = 16  # evenly spaced chunks per clip in the authors' evaluation

    c.data = d = ml_collections.ConfigDict()
    d.name = "magnatagatune"  # TFDS builder name (see tagger_jax.datasets)
    d.builder_config = ""  # TFDS builder config ("" = the builder's default)
    d.data_dir = "~/tensorflow_datasets"  # TFDS data directory
    d.train_split = "train"  # split used for training
    d.eval_split = "validation"  # split used to select the best checkpoint
    d.test_split = "test"  # split reported at the end
    d.extra_test_splits = ()  # more splits tested at the end, in WORKDIR/test/<split>/ (e.g. an unseen SoundFont bank)
    d.num_workers = 2  # grain worker processes feeding the training loop
    d.prefetch = 4  # batches each worker prepares ahead
    d.read_threads = 1  # threads per pipeline process building batches ahead (0: build on demand)
    d.crops_per_record = 1  # crops per record read, spread over k steps (k > 1: about k x the crops per read, an epoch k x the steps, less learnt per step)
    d.manual_dir = ""  # downloaded files to build a missing dataset from ("" = self-contained only)
    d.build_workers = 0  # processes decoding / synthesising clips while building (0 = all cores)
    d.augment = None  # training log-mel augmentations: None (off) or fields of augment.AugmentParams
    d.augment_mix_exclude = ()  # tags that mixing two clips keeps from the first (clip-wide: tempo, level)
    d.crop_labels = "clip"  # training crop labels: "clip" (its clip's tags) or "activity" (tags sounding in the crop; needs tag_mask)

    c.train = t = ml_collections.ConfigDict()
    t.seed = 0  # seeds parameter init, dropout and data order
    t.init_from = ""  # a trained model (its directory or workdir) whose weights start this run ("" = none; tagger_jax.transfer; its learning rate: docs/training.md)
    t.batch_size = 16  # global batch (split over all devices of all hosts)
    t.eval_batch_size = 64  # clips per evaluation batch (each clip contributes eval_chunks crops)
    t.num_epochs = 200  # upper bound on epochs (the authors' plateau schedule usually stops earlier)
    t.optimizer = "authors"  # "authors": Adam then SGD on plateaus; "adamw": warmup + cosine
    t.learning_rate = 1e-4  # Adam learning rate (authors) or AdamW peak learning rate
    t.weight_decay = 1e-4  # SGD weight decay (authors) or AdamW decoupled weight decay
    t.warmup_steps = 500  # AdamW linear warmup steps
    t.readout_lr_multiplier = 1.0  # x the updates of the [CLS] token, pooler and classifier
    t.plateau_patience = 1  # epochs without validation improvement before the next phase
    t.sgd_learning_rates = (1e-3, 1e-4, 1e-5)  # authors: SGD phases after Adam, one per plateau
    t.sgd_momentum = 0.9  # authors: Nesterov momentum of the SGD phases
    t.eval_every_epochs = 1  # validate (best model, plateau schedule) every N epochs and at the end
    t.log_every_steps = 50  # steps between logged training metrics
    t.checkpoint_every_steps = 1000  # steps between "latest" checkpoints (also at every epoch end)
    t.keep_checkpoints = 2  # latest checkpoints kept besides the best one
    t.frame_loss_weight = 0.0  # weight of the frame-level loss of model.frame_head against the exact activity "tag_mask" (needs data.crop_labels="activity")
    t.prng_impl = "threefry2x32"  # dropout RNG: "threefry2x32" or the much faster "rbg" on CPU
    t.progress_bar = True  # tqdm bar with clips/s and ETA (process 0 only)
    t.test_after_training = True  # evaluate the best model on data.test_split at the end
    t.test_baseline = False  # also fit tagger_jax.baseline on the train split and report it beside each tested split
    t.distributed = False  # call jax.distributed.initialize() (also when the cluster env asks)
    return c


def config_file(path: str | os.PathLike) -> ml_collections.ConfigDict:
    """`get_config()` of a Python config file, loaded by path: how a file in `configs/` (not a
    package) builds on another, e.g. `config_file(Path(__file__).with_name("soundfont_cpu.py"))`."""
    path = Path(path)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def paper_mtat_config() -> ml_collections.ConfigDict:
    """The training code's model (c = 16, sinusoidal positions) and the authors' MTAT protocol.

    `configs/paper_mtat.py` returns this; it lives in the package so that `import-authors
    --variant training` works where `configs/` is not at hand.
    """
    c = base_config()
    c.model.architecture = "pons_won"  # the paper's model: Pons front-end + Transformer
    c.model.conv_channels = 16  # training code's width: 6,882,452 parameters
    c.model.positions = "sinusoidal"  # training code's fixed table, no LayerNorm
    c.data.name = "magnatagatune"  # MagnaTagATune top-50, built with `tagger-jax build-dataset`
    c.train.optimizer = "authors"  # Adam 1e-4, then SGD with drops on validation plateaus
    c.train.batch_size = 16  # the authors' batch
    return c


def authors_released_config() -> ml_collections.ConfigDict:
    """The variant of the authors' released checkpoint (models/ponswon.pth) and visualisation code.

    `configs/authors_released.py` returns this; `import-authors --variant released` uses it.
    """
    c = base_config()
    c.model.architecture = "pons_won"  # the paper's model
    c.model.conv_channels = 8  # the released checkpoint is the narrow variant (232 channels)
    c.model.positions = "learned"  # learned table + LayerNorm + dropout
    c.model.max_positions = 271  # the released table has 271 rows; 257 are used
    c.data.name = "magnatagatune"  # it was trained on MagnaTagATune top-50
    return c


class StoredConfigError(ValueError):
    """A stored config has a field of the wrong type or a value where a section belongs."""


def merge_over_base(stored: Mapping[str, Any], base: ml_collections.ConfigDict | None = None
                    ) -> tuple[ml_collections.ConfigDict, list[str]]:
    """`base` (default `base_config()`) with the values of a stored config written over it.

    Fields the stored config lacks (added to the project after it was written) keep their
    defaults. Fields `base` lacks (a config file that adds its own, or a field removed since)
    are kept as stored and returned by name, so the caller can say so. JSON lists become tuples
    where the default is a tuple. Raises StoredConfigError on a value of the wrong type.
    """
    config = base_config() if base is None else base
    extra: list[str] = []

    def merge(node: ml_collections.ConfigDict, values: Mapping[str, Any], prefix: str) -> None:
        for key, value in values.items():
            name = f"{prefix}{key}"
            if key not in node:
                extra.append(name)
                node[key] = value
                continue
            current = node[key]
            if isinstance(current, ml_collections.ConfigDict):
                if not isinstance(value, Mapping):
                    raise StoredConfigError(f"{name}: expected a section, got {value!r}")
                merge(current, value, name + ".")
                continue
            if isinstance(current, tuple) and isinstance(value, list):
                value = tuple(value)
            try:
                node[key] = value
            except TypeError as e:
                raise StoredConfigError(f"{name}: {e}") from None

    if not isinstance(stored, Mapping):
        raise StoredConfigError(f"expected a mapping of sections, got {type(stored).__name__}")
    merge(config, stored, "")
    return config, extra


class FieldDoc(NamedTuple):
    """One config field: dotted name, default value and the comment written next to it."""

    name: str
    default: Any
    comment: str


def field_docs() -> list[FieldDoc]:
    """Every field of `base_config()` in source order, with the comment on its line.

    The comments are read from this module's source (tokenize), the defaults from
    `base_config()` itself, so neither is written twice. A field without a comment gets "".
    """
    source = inspect.getsource(base_config)
    comments = {tok.start[0]: tok.string.lstrip("#").strip()
                for tok in tokenize.generate_tokens(io.StringIO(source).readline)
                if tok.type == tokenize.COMMENT}
    sections: dict[str, str] = {}  # local variable -> section name ("m" -> "model")
    order: list[tuple[str, int]] = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Assign):
            continue
        names = [t for t in node.targets if isinstance(t, ast.Name)]
        attrs = [t for t in node.targets if isinstance(t, ast.Attribute)
                 and isinstance(t.value, ast.Name)]
        if names and attrs:  # c.model = m = ConfigDict()
            sections[names[0].id] = attrs[0].attr
        elif attrs:
            order.append((f"{attrs[0].value.id}.{attrs[0].attr}", node.lineno))
    defaults = base_config()
    docs = []
    for target, lineno in sorted(order, key=lambda x: x[1]):
        var, field = target.split(".")
        if var not in sections:
            continue
        name = f"{sections[var]}.{field}"
        docs.append(FieldDoc(name, defaults[sections[var]][field], comments.get(lineno, "")))
    return docs
