"""Independent float64 NumPy forward pass of the authors' `pons_won` model, for equality tests.

Written from `shared/reference/original-implementation.md`, not from the Flax code: it reads the
authors' state dict directly (PyTorch names and layouts: linear (out, in), conv (out, in, k...)),
works in their (batch, channels, freq, time) layout, runs BatchNorm in eval mode with the running
statistics, and computes every attention query of every layer. The variant follows from the state
dict (learned positions iff it has `back_end.embedding.*`; c from the conv shapes).

`forward(..., override=...)` replaces the last layer's attention probabilities (every head and
query) with a given array, as in the paper's tag-wise contribution maps.
"""
from __future__ import annotations

from typing import Mapping, Optional

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from scipy.special import erf

BN_EPS = 1e-5
LN_EPS = 1e-12
HEADS = 8
N_VERTICAL = 6  # front_end.layers.0..5 are 2-D (vertical) convs, 6..9 1-D (horizontal) convs


def _state(state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    out = {}
    for key, value in state.items():
        key = key[len("module."):] if key.startswith("module.") else key
        if not key.endswith("num_batches_tracked"):
            out[key] = np.asarray(value, dtype=np.float64)
    return out


def batch_norm_eval(x: np.ndarray, s: dict, prefix: str) -> np.ndarray:
    """Eval-mode BatchNorm over axis 1 (channels) with running statistics."""
    shape = (1, -1) + (1,) * (x.ndim - 2)
    mean = s[f"{prefix}.running_mean"].reshape(shape)
    var = s[f"{prefix}.running_var"].reshape(shape)
    return ((x - mean) / np.sqrt(var + BN_EPS) * s[f"{prefix}.weight"].reshape(shape)
            + s[f"{prefix}.bias"].reshape(shape))


def conv2d_valid_freq_same_time(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """x (B, 1, F, T), w (O, 1, h, k): no padding in frequency, k // 2 zeros each side in time."""
    _, _, h, k = w.shape
    xp = np.pad(x[:, 0], ((0, 0), (0, 0), (k // 2, k // 2)))
    windows = sliding_window_view(xp, (h, k), axis=(1, 2))  # (B, F - h + 1, T, h, k)
    return np.einsum("bftij,oij->boft", windows, w[:, 0]) + b[None, :, None, None]


def conv1d_same(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """x (B, I, T), w (O, I, k), padding k // 2 on both sides (k odd)."""
    k = w.shape[-1]
    xp = np.pad(x, ((0, 0), (0, 0), (k // 2, k // 2)))
    windows = sliding_window_view(xp, k, axis=2)  # (B, I, T, k)
    return np.einsum("bitk,oik->bot", windows, w) + b[None, :, None]


def linear(x: np.ndarray, s: dict, prefix: str) -> np.ndarray:
    return x @ s[f"{prefix}.weight"].T + s[f"{prefix}.bias"]


def layer_norm(x: np.ndarray, s: dict, prefix: str) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + LN_EPS) * s[f"{prefix}.weight"] + s[f"{prefix}.bias"]


def gelu(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + erf(x / np.sqrt(2.0)))


def relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0.0)


def front_end(spec: np.ndarray, s: dict, timbre_norm: str = "none") -> np.ndarray:
    """(B, 96, T) spectrogram -> (B, 512, T) features. `timbre_norm` (not in the authors' code):
    the vertical convolutions see the normalised spectrogram minus its maximum over the chunk
    ("chunk_peak") or over each frame's mel bands ("frame_peak")."""
    x = batch_norm_eval(spec[:, None].astype(np.float64), s, "front_end.input_bn")  # (B,1,F,T)
    peak_axes = {"none": None, "chunk_peak": (2, 3), "frame_peak": (2,)}[timbre_norm]
    xv = x if peak_axes is None else x - x.max(axis=peak_axes, keepdims=True)
    outs = []
    for i in range(N_VERTICAL):
        p = f"front_end.layers.{i}"
        y = conv2d_valid_freq_same_time(xv, s[f"{p}.conv.weight"], s[f"{p}.conv.bias"])
        outs.append(relu(batch_norm_eval(y, s, f"{p}.bn")).max(axis=2))  # max over freq rows
    mean = x.mean(axis=2)  # (B, 1, T): frequency average
    i = N_VERTICAL
    while f"front_end.layers.{i}.conv.weight" in s:
        p = f"front_end.layers.{i}"
        y = conv1d_same(mean, s[f"{p}.conv.weight"], s[f"{p}.conv.bias"])
        outs.append(relu(batch_norm_eval(y, s, f"{p}.bn")))
        i += 1
    h = np.concatenate(outs, axis=1)  # (B, 29c, T)
    y = conv1d_same(h, s["front_end.conv1x1.weight"], s["front_end.conv1x1.bias"])
    return relu(batch_norm_eval(y, s, "front_end.bn"))


def cls_vector(channels: int) -> np.ndarray:
    """The authors' constant [CLS]: np.random.seed(0); np.random.random((1, C)), cast to float32."""
    saved = np.random.get_state()
    np.random.seed(0)
    v = np.random.random((1, channels))
    np.random.set_state(saved)
    return v.astype(np.float32).astype(np.float64)


def sinusoid(length: int, channels: int) -> np.ndarray:
    table = np.zeros((length, channels))
    for p in range(1, length):
        for j in range(channels):
            angle = p / 10000 ** (2 * (j // 2) / channels)
            table[p, j] = np.sin(angle) if j % 2 == 0 else np.cos(angle)
    return table


def bert_layer(x: np.ndarray, s: dict, prefix: str,
               override: Optional[np.ndarray] = None) -> tuple[np.ndarray, np.ndarray]:
    """Post-LN BERT layer over all queries; returns (output, probabilities (B, H, L, L))."""
    b, n, d = x.shape
    dh = d // HEADS
    heads = lambda t: t.reshape(b, n, HEADS, dh).transpose(0, 2, 1, 3)  # (B, H, L, dh)
    q = heads(linear(x, s, f"{prefix}.attention.self.query"))
    k = heads(linear(x, s, f"{prefix}.attention.self.key"))
    v = heads(linear(x, s, f"{prefix}.attention.self.value"))
    scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(dh)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    if override is not None:
        probs = np.broadcast_to(np.asarray(override, np.float64), probs.shape)
    context = (probs @ v).transpose(0, 2, 1, 3).reshape(b, n, d)
    h = layer_norm(x + linear(context, s, f"{prefix}.attention.output.dense"), s,
                   f"{prefix}.attention.output.LayerNorm")
    f = linear(gelu(linear(h, s, f"{prefix}.intermediate.dense")), s, f"{prefix}.output.dense")
    return layer_norm(h + f, s, f"{prefix}.output.LayerNorm"), probs


def forward(state: Mapping[str, np.ndarray], spec: np.ndarray,
            override: Optional[np.ndarray] = None) -> dict[str, object]:
    """Eval forward. Returns {"logits", "probs" (sigmoid), "attention": [(B, H, L, L) per layer],
    "hidden": [(B, L, C) output of each layer, every query]}.

    `override`, if given, replaces the LAST layer's attention probabilities (broadcast to
    (B, H, L, L)), without softmax or dropout.
    """
    s = _state(state)
    seq = front_end(np.asarray(spec, np.float64), s).transpose(0, 2, 1)  # (B, T, 512)
    b, t, d = seq.shape
    x = np.concatenate([np.broadcast_to(cls_vector(d), (b, 1, d)), seq], axis=1)
    if "back_end.embedding.position_embeddings.weight" in s:
        x = x + s["back_end.embedding.position_embeddings.weight"][: t + 1]
        x = layer_norm(x, s, "back_end.embedding.LayerNorm")
    else:
        x = x + sinusoid(t + 1, d)
    n_layers = 1 + max(int(k.split(".")[3]) for k in s if k.startswith("back_end.encoder.layer."))
    attention, hidden = [], []
    for i in range(n_layers):
        x, probs = bert_layer(x, s, f"back_end.encoder.layer.{i}",
                              override if i == n_layers - 1 else None)
        attention.append(probs)
        hidden.append(x)
    pooled = np.tanh(linear(x[:, 0], s, "back_end.pooler.dense"))
    logits = linear(pooled, s, "classifier")
    return {"logits": logits, "probs": 1.0 / (1.0 + np.exp(-logits)), "attention": attention,
            "hidden": hidden}


def one_hot_override(t: int, length: int = 257) -> np.ndarray:
    """Contribution-map override: every head and query attends to key t only."""
    override = np.zeros(length)
    override[t] = 1.0
    return override
