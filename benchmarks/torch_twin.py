"""A PyTorch re-creation of the authors' `pons_won` model: speed baseline and state-dict source.

Written from `shared/reference/original-implementation.md` (not from their code) with the module
names of their checkpoints, so `state_dict()` has exactly the keys and shapes of a state dict saved
by their code (training-code variant: c = 16, sinusoidal positions; released checkpoint: c = 8,
learned 271-row table + LayerNorm + dropout). Layout is theirs: (batch, channels, freq, time).

torch is optional. This module imports it only inside `build_twin`, so the NumPy-only parts
(`state_dict_shapes`, `random_state_dict`) also serve tests and tools without torch.
"""
from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np

# Per variant: front-end width c and the kind of position table.
VARIANTS = {
    "training": {"conv_channels": 16, "positions": "sinusoidal"},
    "released": {"conv_channels": 8, "positions": "learned"},
}
# front_end.layers.0..5: (kernel height, kernel width, output channels / c).
VERTICAL = ((86, 7, 1), (86, 3, 2), (86, 1, 4), (38, 7, 1), (38, 3, 2), (38, 1, 4))
# front_end.layers.6..9: (kernel width, output channels / c), on the frequency-averaged input.
HORIZONTAL = ((165, 1), (129, 2), (65, 4), (33, 8))
HIDDEN, HEADS, INTERMEDIATE, LAYERS = 512, 8, 2048, 2
MAX_POSITIONS = 271
N_MELS = 96


def _variant(variant: str) -> dict:
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {sorted(VARIANTS)}, got {variant!r}")
    return VARIANTS[variant]


def state_dict_shapes(variant: str, num_tags: int = 50) -> dict[str, tuple[int, ...]]:
    """Every key of the twin's (and the authors') state dict with its shape, in their order."""
    c = _variant(variant)["conv_channels"]
    shapes: dict[str, tuple[int, ...]] = {}

    def bn(prefix: str, n: int) -> None:
        for name in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{prefix}.{name}"] = (n,)
        shapes[f"{prefix}.num_batches_tracked"] = ()

    def linear(prefix: str, n_out: int, n_in: int) -> None:
        shapes[f"{prefix}.weight"] = (n_out, n_in)
        shapes[f"{prefix}.bias"] = (n_out,)

    def layer_norm(prefix: str) -> None:
        shapes[f"{prefix}.weight"] = (HIDDEN,)
        shapes[f"{prefix}.bias"] = (HIDDEN,)

    bn("front_end.input_bn", 1)
    branches = [(h, w, m * c) for h, w, m in VERTICAL] + [(None, w, m * c) for w, m in HORIZONTAL]
    for i, (h, w, out) in enumerate(branches):
        shapes[f"front_end.layers.{i}.conv.weight"] = (out, 1, h, w) if h else (out, 1, w)
        shapes[f"front_end.layers.{i}.conv.bias"] = (out,)
        bn(f"front_end.layers.{i}.bn", out)
    total = sum(out for _, _, out in branches)
    shapes["front_end.conv1x1.weight"] = (HIDDEN, total, 1)
    shapes["front_end.conv1x1.bias"] = (HIDDEN,)
    bn("front_end.bn", HIDDEN)
    if VARIANTS[variant]["positions"] == "learned":
        shapes["back_end.embedding.position_embeddings.weight"] = (MAX_POSITIONS, HIDDEN)
        layer_norm("back_end.embedding.LayerNorm")
    for i in range(LAYERS):
        p = f"back_end.encoder.layer.{i}"
        for name in ("query", "key", "value"):
            linear(f"{p}.attention.self.{name}", HIDDEN, HIDDEN)
        linear(f"{p}.attention.output.dense", HIDDEN, HIDDEN)
        layer_norm(f"{p}.attention.output.LayerNorm")
        linear(f"{p}.intermediate.dense", INTERMEDIATE, HIDDEN)
        linear(f"{p}.output.dense", HIDDEN, INTERMEDIATE)
        layer_norm(f"{p}.output.LayerNorm")
    linear("back_end.pooler.dense", HIDDEN, HIDDEN)
    linear("classifier", num_tags, HIDDEN)
    return shapes


def random_state_dict(variant: str, seed: int = 0, num_tags: int = 50) -> dict[str, np.ndarray]:
    """A state dict with the authors' keys and every tensor random, BatchNorm statistics included.

    Scales keep activations of order one through the whole network (weights ~ N(0, 1/fan_in);
    query and key weights twice that, so attention is peaked, not near-uniform; sigmoids are far
    from saturated), which makes equality tests sensitive to every weight. Running variances are
    positive.
    """
    rng = np.random.default_rng(seed)
    state = {}
    for key, shape in state_dict_shapes(variant, num_tags).items():
        if key.endswith("num_batches_tracked"):
            value = np.asarray(rng.integers(1, 100_000), dtype=np.int64)
        elif key.endswith("running_var"):
            value = rng.uniform(0.5, 2.0, shape)
        elif key.endswith("running_mean"):
            value = rng.normal(0.0, 0.5, shape)
        elif key.endswith("bias"):
            value = rng.normal(0.0, 0.1, shape)
        elif len(shape) == 1:  # BatchNorm / LayerNorm scale
            value = rng.uniform(0.5, 1.5, shape)
        elif key.endswith("position_embeddings.weight"):
            value = rng.normal(0.0, 0.5, shape)
        else:  # conv or linear weight, (out, in, kernel...)
            # Larger query/key weights make attention peaked rather than near-uniform.
            gain = 2.0 if key.endswith(("query.weight", "key.weight")) else 1.0
            value = rng.normal(0.0, gain / math.sqrt(np.prod(shape[1:])), shape)
        state[key] = value if key.endswith("num_batches_tracked") else value.astype(np.float32)
    return state


def sinusoidal_table(length: int, channels: int) -> np.ndarray:
    """Training-code positions: row 0 zero; angle p / 10000^(2 floor(j/2) / channels), sin/cos."""
    table = np.zeros((length, channels))
    for j in range(channels):
        angle = np.arange(1, length) / 10000.0 ** (2 * (j // 2) / channels)
        table[1:, j] = np.sin(angle) if j % 2 == 0 else np.cos(angle)
    return table.astype(np.float32)


def authors_cls_vector(channels: int = HIDDEN) -> np.ndarray:
    """`np.random.seed(0); np.random.random((1, channels))` as float32, global RNG state restored."""
    saved = np.random.get_state()
    try:
        np.random.seed(0)
        return np.random.random((1, channels)).astype(np.float32)
    finally:
        np.random.set_state(saved)


@functools.lru_cache(maxsize=None)
def _torch_classes() -> Any:
    """Defines the torch modules on first use (torch is an optional dependency)."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    class VerticalBranch(nn.Module):
        """Conv over (86 or 38 mel bands) x w frames, BN, ReLU, max over remaining mel rows."""

        def __init__(self, height: int, width: int, out: int):
            super().__init__()
            self.conv = nn.Conv2d(1, out, (height, width), padding=(0, width // 2))
            self.bn = nn.BatchNorm2d(out)

        def forward(self, x):  # (B, 1, F, T) -> (B, out, T)
            return F.relu(self.bn(self.conv(x))).amax(dim=2)

    class HorizontalBranch(nn.Module):
        """1-D conv over time on the frequency-averaged spectrogram, BN, ReLU."""

        def __init__(self, width: int, out: int):
            super().__init__()
            self.conv = nn.Conv1d(1, out, width, padding=width // 2)
            self.bn = nn.BatchNorm1d(out)

        def forward(self, x):  # (B, 1, T) -> (B, out, T)
            return F.relu(self.bn(self.conv(x)))

    class FrontEnd(nn.Module):
        def __init__(self, c: int):
            super().__init__()
            self.input_bn = nn.BatchNorm2d(1)
            self.layers = nn.ModuleList(
                [VerticalBranch(h, w, m * c) for h, w, m in VERTICAL]
                + [HorizontalBranch(w, m * c) for w, m in HORIZONTAL])
            total = sum(m for *_, m in VERTICAL) * c + sum(m for _, m in HORIZONTAL) * c
            self.conv1x1 = nn.Conv1d(total, HIDDEN, 1)
            self.bn = nn.BatchNorm1d(HIDDEN)

        def forward(self, spec):  # (B, F, T) -> (B, 512, T)
            x = self.input_bn(spec.unsqueeze(1))
            mean = x.mean(dim=2)  # (B, 1, T)
            outs = [layer(x) for layer in self.layers[:len(VERTICAL)]]
            outs += [layer(mean) for layer in self.layers[len(VERTICAL):]]
            return F.relu(self.bn(self.conv1x1(torch.cat(outs, dim=1))))

    class Embedding(nn.Module):
        """Released variant: learned positions, LayerNorm, dropout."""

        def __init__(self, dropout: float):
            super().__init__()
            self.position_embeddings = nn.Embedding(MAX_POSITIONS, HIDDEN)
            self.LayerNorm = nn.LayerNorm(HIDDEN, eps=1e-12)
            self.dropout = nn.Dropout(dropout)

        def forward(self, x):
            x = x + self.position_embeddings.weight[: x.shape[1]]
            return self.dropout(self.LayerNorm(x))

    class SelfAttention(nn.Module):
        def __init__(self, dropout: float):
            super().__init__()
            self.query = nn.Linear(HIDDEN, HIDDEN)
            self.key = nn.Linear(HIDDEN, HIDDEN)
            self.value = nn.Linear(HIDDEN, HIDDEN)
            self.dropout = nn.Dropout(dropout)

        def forward(self, x):
            b, n, _ = x.shape
            split = lambda t: t.view(b, n, HEADS, HIDDEN // HEADS).transpose(1, 2)
            q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
            scores = q @ k.transpose(-1, -2) / math.sqrt(HIDDEN // HEADS)
            probs = self.dropout(scores.softmax(dim=-1))
            return (probs @ v).transpose(1, 2).reshape(b, n, HIDDEN)

    class AddNorm(nn.Module):
        """dense, dropout, LayerNorm(residual + .): BERT's SelfOutput / Output."""

        def __init__(self, n_in: int, dropout: float):
            super().__init__()
            self.dense = nn.Linear(n_in, HIDDEN)
            self.LayerNorm = nn.LayerNorm(HIDDEN, eps=1e-12)
            self.dropout = nn.Dropout(dropout)

        def forward(self, h, residual):
            return self.LayerNorm(residual + self.dropout(self.dense(h)))

    class Attention(nn.Module):
        def __init__(self, attention_dropout: float, hidden_dropout: float):
            super().__init__()
            self.self = SelfAttention(attention_dropout)
            self.output = AddNorm(HIDDEN, hidden_dropout)

        def forward(self, x):
            return self.output(self.self(x), x)

    class Intermediate(nn.Module):
        def __init__(self):
            super().__init__()
            self.dense = nn.Linear(HIDDEN, INTERMEDIATE)

        def forward(self, x):
            return F.gelu(self.dense(x))  # exact (erf) GELU

    class Layer(nn.Module):
        def __init__(self, attention_dropout: float, hidden_dropout: float):
            super().__init__()
            self.attention = Attention(attention_dropout, hidden_dropout)
            self.intermediate = Intermediate()
            self.output = AddNorm(INTERMEDIATE, hidden_dropout)

        def forward(self, x):
            h = self.attention(x)
            return self.output(self.intermediate(h), h)

    class Encoder(nn.Module):
        def __init__(self, attention_dropout: float, hidden_dropout: float):
            super().__init__()
            self.layer = nn.ModuleList(
                [Layer(attention_dropout, hidden_dropout) for _ in range(LAYERS)])

        def forward(self, x):
            for layer in self.layer:
                x = layer(x)
            return x

    class Pooler(nn.Module):
        def __init__(self):
            super().__init__()
            self.dense = nn.Linear(HIDDEN, HIDDEN)

        def forward(self, x):
            return torch.tanh(self.dense(x[:, 0]))

    class BackEnd(nn.Module):
        """[CLS] + positions + BERT encoder + pooler; [CLS] and sinusoids are not in the state dict."""

        def __init__(self, positions: str, attention_dropout: float, hidden_dropout: float):
            super().__init__()
            self.register_buffer("cls", torch.from_numpy(authors_cls_vector()), persistent=False)
            if positions == "learned":
                self.embedding = Embedding(hidden_dropout)
            else:  # the training code's table has exactly T + 1 = 257 rows
                table = torch.from_numpy(sinusoidal_table(257, HIDDEN))
                self.register_buffer("positions", table, persistent=False)
            self.learned = positions == "learned"
            self.encoder = Encoder(attention_dropout, hidden_dropout)
            self.pooler = Pooler()

        def forward(self, seq):  # (B, T, 512)
            cls = self.cls.to(seq.dtype).expand(seq.shape[0], 1, HIDDEN)
            x = torch.cat([cls, seq], dim=1)
            if self.learned:
                x = self.embedding(x)
            else:
                table = self.positions
                if table.shape[0] != x.shape[1]:
                    table = torch.from_numpy(sinusoidal_table(x.shape[1], HIDDEN)).to(x.device)
                x = x + table.to(x.dtype)
            return self.pooler(self.encoder(x))

    class PonsWon(nn.Module):
        """Spectrogram (B, 96, T) -> tag logits (B, num_tags); sigmoid outside, as in the loss."""

        def __init__(self, variant: str, num_tags: int = 50, attention_dropout: float = 0.4,
                     hidden_dropout: float = 0.4, classifier_dropout: float = 0.5):
            super().__init__()
            cfg = _variant(variant)
            self.front_end = FrontEnd(cfg["conv_channels"])
            self.back_end = BackEnd(cfg["positions"], attention_dropout, hidden_dropout)
            self.dropout = nn.Dropout(classifier_dropout)
            self.classifier = nn.Linear(HIDDEN, num_tags)

        def forward(self, spec):
            seq = self.front_end(spec).transpose(1, 2)
            return self.classifier(self.dropout(self.back_end(seq)))

    return PonsWon


def build_twin(variant: str, num_tags: int = 50, **dropouts: float):
    """The torch module for `variant` ("training" or "released"), freshly initialised."""
    return _torch_classes()(variant, num_tags, **dropouts)


def load_numpy_state_dict(module, state: dict[str, np.ndarray]) -> None:
    """Loads a NumPy state dict (e.g. from `random_state_dict`) strictly into a twin."""
    import torch

    module.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in state.items()},
                           strict=True)


if __name__ == "__main__":
    import sys

    sys.exit("torch_twin.py is a module (the PyTorch twin the benchmarks import), not a script: "
             "run benchmarks/inference.py, forward_pieces.py or model_step.py")
