#!/usr/bin/env python
"""How good is each explanation, and what does it cost? (docs/explanations.md reports a run.)

Localisation, on `synthetic_tags/segments`: the two halves of each clip use instrument sets that
share no instrument tag, and a frame mask says where each tag sounds. The model reads the clip's
centre chunk (256 frames, the junction in the middle: Figure 2's two-clip setup, with ground truth).
For every (clip, tag) whose tag sounds in part of the chunk only, each method's frame map for that
tag (attention maps are the same for every tag) is scored by
  - pointing game: is the map's maximum on a frame where the tag sounds?
  - ROC-AUC of the map against the frame mask (0.5 = no localisation);
  - deletion: the tag's probability as the top-ranked frames are replaced by the chunk's dB floor,
    in 16 steps; the mean over the curve (lower = the map found what the model uses).
Gradient maps are summed over frequency (signed: evidence for the tag). A "random" map gives the
chance level of every score.

Listening (`--parts listening`): each map of each such pair is auralised
(`tagger_jax.explain.auralise`, keep 50% by default) on the chunk's audio (synthesised again from
the clip's seed), and the model is run on the kept audio, the complement, and the kept and removed
parts of a random mask of the same area: is what one hears where the model's evidence is?

Cost: seconds per clip of each method next to one forward pass, for the benchmark model and for
the paper's model (c = 16, 512 channels, 256 frames; random weights), together with the authors'
procedure (257 full forward passes with the override), in JAX and, with torch installed, with the
PyTorch twin of their model (benchmarks/torch_twin.py).

    python benchmarks/explanations.py --workdir runs/explanations_benchmark   # trains if needed
    python benchmarks/explanations.py --checkpoint DIR --clips 200 --write-docs
    python benchmarks/explanations.py --checkpoint DIR --parts listening --write-docs
    python benchmarks/explanations.py --parts timing --write-docs   # the cost tables alone

Against the score (`soundfont_tags`, exact instrument activity; a model trained on it):
`--against-score` scores the maps of the centre chunk of each clip; with `--track`, the maps the
explain run (`tagger_jax.explain.runner`, what `tagger-jax explain` writes) stitches over the
whole clip, against the clip's activity, next to the same baselines over the track and deletion
of the track probability. Both go through `score_maps`.

    python benchmarks/explanations.py --against-score --checkpoint RUN --clips 60
    python benchmarks/explanations.py --against-score --track --checkpoint RUN --clips 60
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LOCALISATION_METHODS = ("attention", "rollout", "contribution", "grad_x_input",
                        "integrated_gradients")
DOC = ROOT / "docs" / "explanations.md"
FIGURES = ROOT / "docs" / "figures"
BEGIN, END = "<!-- benchmark:begin -->", "<!-- benchmark:end -->"
TIMING_BEGIN, TIMING_END = "<!-- timing:begin -->", "<!-- timing:end -->"


# ---------------------------------------------------------------------------------------------
# Model


def get_model(args):
    """The checkpoint to benchmark; trains configs/synthetic_cpu.py into --workdir if needed."""
    from tagger_jax.checkpoint import CheckpointError, load_model

    path = args.checkpoint or args.workdir
    try:
        return load_model(path), None
    except CheckpointError:
        if args.checkpoint:
            raise
    from configs.synthetic_cpu import get_config
    from tagger_jax.train_lib import train_and_evaluate

    config = get_config()
    if args.data_dir:
        config.data.data_dir = args.data_dir
    print(f"no trained model in {args.workdir}: training configs/synthetic_cpu.py there",
          flush=True)
    t0 = time.perf_counter()
    summary = train_and_evaluate(config, args.workdir)
    print(f"trained in {time.perf_counter() - t0:.0f} s: {summary}", flush=True)
    return load_model(args.workdir), time.perf_counter() - t0


# ---------------------------------------------------------------------------------------------
# Localisation


def partial_tags(mask: np.ndarray) -> np.ndarray:
    """Indices of the tags of a (tags, frames) activity mask that sound in part of the frames
    only (neither never nor always): the tags a map can localise."""
    active = np.asarray(mask).sum(axis=-1)
    return np.flatnonzero((active > 0) & (active < mask.shape[-1]))


def centre_chunks(source, clips: int, chunk: int):
    """The centre `chunk` frames of the first `clips` records of a split with frame activity:
    log-mels (clips, 96, chunk), masks (clips, tags, chunk) and the (clip, tag) pairs whose tag
    sounds in part of the chunk only (`partial_tags`)."""
    xs, masks, pairs = [], [], []
    for i in range(min(clips, len(source))):
        record = source[i]
        mel = np.asarray(record["mel"], np.float32)
        mask = np.asarray(record["tag_mask"], np.uint8)
        start = (mel.shape[1] - chunk) // 2
        x, m = mel[:, start:start + chunk], mask[:, start:start + chunk]
        pairs += [(len(xs), int(k)) for k in partial_tags(m)]
        xs.append(x)
        masks.append(m)
    return np.stack(xs), np.stack(masks), pairs


def require_tags(loaded, dataset: str, tags=None) -> None:
    """Exits with one `error:` line unless the model's tags are `dataset`'s (its builder's
    `TAGS`, checked before building it; or the built dataset's `tags`)."""
    from tagger_jax.datasets import BUILDERS

    want, have = tuple(BUILDERS[dataset].TAGS if tags is None else tags), tuple(loaded.tags)
    if have != want:
        extra = [t for t in have if t not in want]
        lacks = [t for t in want if t not in have]
        raise SystemExit(f"error: this part needs a model trained on {dataset}; the model's "
                         "tags " + (f"include {', '.join(extra)} and lack {', '.join(lacks)}"
                                     if extra or lacks else f"are {dataset}'s in another order"))


def load_clips(loaded, args):
    """Centre chunks, frame masks and tag lists of the segments split (one-half tags only)."""
    from tagger_jax.datasets import ensure_built, load_split

    data_dir = args.data_dir or loaded.config.data.data_dir
    require_tags(loaded, "synthetic_tags")
    ensure_built("synthetic_tags", data_dir, "segments")
    source, tags = load_split("synthetic_tags", args.split, data_dir, "segments")
    require_tags(loaded, "synthetic_tags", tags)
    return centre_chunks(source, args.clips, int(loaded.config.features.chunk_frames))


def frame_maps(loaded, xs, pairs, args):
    """{method: (pairs, chunk) frame map}, the chunk probabilities (clips, tags), the
    integrated-gradients completeness gaps and {gradient method: (pairs, 96, chunk) band map}."""
    import jax

    from tagger_jax.explain import methods as M

    by_clip: dict[int, list[int]] = {}
    for c, k in pairs:
        by_clip.setdefault(c, []).append(k)
    kmax = max(len(v) for v in by_clip.values())
    tags = np.zeros((len(xs), kmax), np.int32)
    for c, ks in by_clip.items():
        tags[c, :len(ks)] = ks
        tags[c, len(ks):] = ks[0]
    from tqdm import tqdm

    from tagger_jax.progress import bar_interval

    fn = jax.jit(lambda v, x, t: M.explain(
        loaded.model, v, x, t, methods=LOCALISATION_METHODS, ig_steps=args.ig_steps))
    b = args.batch
    outs = []
    for s in tqdm(range(0, len(xs), b), desc="maps", unit="batch", **bar_interval()):
        x, t = xs[s:s + b], tags[s:s + b]
        n = len(x)
        if n < b:  # one shape for the whole run
            x = np.concatenate([x, np.repeat(x[:1], b - n, 0)])
            t = np.concatenate([t, np.repeat(t[:1], b - n, 0)])
        out = jax.device_get(fn(loaded.variables, x, t))
        outs.append({k: np.asarray(v)[:n] for k, v in out.items()})
    out = {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}
    maps = {m: [] for m in LOCALISATION_METHODS}
    bands = {g: [] for g in ("grad_x_input", "integrated_gradients")}  # (pairs, 96, chunk)
    for c, k in pairs:
        j = by_clip[c].index(k)
        maps["attention"].append(out["attention"][c, 1:])
        maps["rollout"].append(out["rollout"][c, 1:])
        maps["contribution"].append(out["contribution"][c, k, 1:])
        for g in ("grad_x_input", "integrated_gradients"):
            maps[g].append(out[g][c, j].sum(0))  # signed evidence per frame
            bands[g].append(out[g][c, j])
    rng = np.random.default_rng(0)
    maps = {m: np.stack(v) for m, v in maps.items()}
    maps["random"] = rng.random(maps["attention"].shape)
    completeness = np.abs(out["integrated_gradients"].reshape(out["integrated_gradients"].shape[:2]
                                                              + (-1,)).sum(-1)
                          - (out["integrated_gradients_output"]
                             - out["integrated_gradients_baseline_output"]))
    rel = completeness / np.maximum(np.abs(out["integrated_gradients_output"]
                                           - out["integrated_gradients_baseline_output"]), 1e-6)
    return maps, out["probabilities"], {"max_abs_gap": float(completeness.max()),
                                        "median_rel_gap": float(np.median(rel)),
                                        "p95_rel_gap": float(np.percentile(rel, 95))}, {
        g: np.stack(v) for g, v in bands.items()}


def deletion_curves(loaded, xs, pairs, maps, args):
    """{method: (pairs, steps + 1) probability of the tag as top-ranked frames are removed}."""
    import jax
    from tqdm import tqdm

    from tagger_jax.progress import bar_interval

    chunk = xs.shape[-1]
    steps = args.deletion_steps
    counts = np.rint(np.linspace(0, chunk, steps + 1)).astype(int)
    names = list(maps)  # the "random" map is the random-order reference
    predict = jax.jit(lambda v, x: jax.nn.sigmoid(loaded.model.apply(v, x)))
    curves = {n: np.zeros((len(pairs), steps + 1)) for n in names}
    for p, (c, k) in enumerate(tqdm(pairs, desc="deletion", unit="pair", **bar_interval())):
        x = xs[c]
        floor = x.min()
        batch = []
        for n in names:
            order = np.argsort(-maps[n][p], kind="stable")
            for count in counts:
                y = x.copy()
                y[:, order[:count]] = floor
                batch.append(y)
        probs = np.asarray(predict(loaded.variables, np.stack(batch)))[:, k]
        for i, n in enumerate(names):
            curves[n][p] = probs[i * (steps + 1):(i + 1) * (steps + 1)]
    return curves


def pointing_game(frame_map: np.ndarray, truth: np.ndarray) -> float:
    """Is the map's maximum on a frame where the tag sounds? With ties at the maximum, the
    fraction of the tied frames where it sounds (the expected hit of a random tie-break), so a
    constant map scores the tag's share of the frames rather than whether frame 0 is active.
    NaN map values (frames no window covers) are never the maximum."""
    m = np.asarray(frame_map, np.float64)
    top = m == np.nanmax(m)
    return float(np.asarray(truth, bool)[top].mean())


def score_maps(maps: dict[str, Any], truth, detected: np.ndarray,
               curves: dict[str, np.ndarray] | None = None) -> dict:
    """The localisation scores of frame maps against activity, one function for the chunk and
    the track level.

    maps: {name: sequence over pairs of (T_p,) frame maps}; truth: sequence over pairs of (T_p,)
    0/1 activity (every pair has both values: `partial_tags`); detected: (pairs,) bool, the
    model's probability of the pair's tag > 0.5; curves: optional {name: (pairs, steps + 1)}
    deletion curves (probability of the tag as top-ranked frames are removed).
    Returns {(subset, name): {"pairs", "pointing", "auc", "deletion", "probability"}} for the
    subsets "all" and "detected": pointing game (`pointing_game`), frame ROC-AUC (scikit-learn,
    0.5 = no localisation), and with curves the mean of the curve and its first point (NaN
    without curves, or for an empty subset).
    """
    from sklearn.metrics import roc_auc_score

    truth = [np.asarray(t).astype(bool) for t in truth]
    detected = np.asarray(detected, bool)
    if len(detected) != len(truth):
        raise ValueError(f"{len(truth)} pairs but {len(detected)} detection flags")
    rows = {}
    for subset, keep in (("all", np.ones(len(truth), bool)), ("detected", detected)):
        idx = np.flatnonzero(keep)
        for name, m in maps.items():
            if len(m) != len(truth):
                raise ValueError(f"map {name!r} has {len(m)} pairs, the activity {len(truth)}")
            have = len(idx) > 0
            pointing = np.mean([pointing_game(m[i], truth[i]) for i in idx]) if have else np.nan
            auc = np.mean([roc_auc_score(truth[i], m[i]) for i in idx]) if have else np.nan
            curve = None if curves is None or not have else np.asarray(curves[name])[idx]
            rows[(subset, name)] = {
                "pairs": int(len(idx)), "pointing": float(pointing), "auc": float(auc),
                "deletion": float(curve.mean()) if curve is not None else float("nan"),
                "probability": float(curve[:, 0].mean()) if curve is not None else float("nan")}
    return rows


def localisation_table(maps, masks, pairs, probs, curves):
    """`score_maps` of chunk maps (pairs, chunk) against the chunk masks (clips, tags, chunk)."""
    return score_maps(maps, [masks[c, k] for c, k in pairs],
                      np.array([probs[c, k] > 0.5 for c, k in pairs]), curves)


# ---------------------------------------------------------------------------------------------
# Scored against the score: `soundfont_tags` (exact instrument activity), with map baselines


def load_score_clips(loaded, data_dir, split: str, clips: int, config: str = ""):
    """Centre chunks (clips, 96, chunk), exact activity (clips, tags, chunk) and the (clip, tag)
    pairs whose instrument sounds in part of the chunk only, from a `soundfont_tags` split."""
    from tagger_jax.datasets import ensure_built, load_split

    require_tags(loaded, "soundfont_tags")
    ensure_built("soundfont_tags", data_dir, config or None)
    source, tags = load_split("soundfont_tags", split, data_dir, config or None)
    require_tags(loaded, "soundfont_tags", tags)
    return centre_chunks(source, clips, int(loaded.config.features.chunk_frames))


def energy_map(xs, pairs) -> np.ndarray:
    """(pairs, chunk): the chunk's loudness per frame (mean over mel bands of the dB log-mel), the
    same for every tag: a map that knows where something sounds but not what."""
    return np.stack([xs[c].mean(axis=0) for c, _ in pairs])


def sigmoid_fn(loaded):
    """The jitted `(variables, x) -> sigmoid(model(x))` of a loaded model (make it once per run:
    every new one compiles again)."""
    import jax

    return jax.jit(lambda v, x: jax.nn.sigmoid(loaded.model.apply(v, x)))


def windowed_probabilities(loaded, windows: np.ndarray, batch: int = 64,
                           predict=None) -> np.ndarray:
    """(n, tags) sigmoid outputs of the model on (n, 96, W) windows, in batches of one
    compiled shape (the last one padded); `predict`: a `sigmoid_fn` to reuse."""
    predict = predict or sigmoid_fn(loaded)
    probs = []
    for b in range(0, len(windows), batch):
        part = windows[b:b + batch]
        n = len(part)
        if n < batch:  # one compiled shape
            part = np.concatenate([part, np.repeat(part[:1], batch - n, 0)])
        probs.append(np.asarray(predict(loaded.variables, part))[:n])
    return np.concatenate(probs)


def taggram_map(loaded, xs, pairs, window: int, hop: int, batch: int = 64) -> list[np.ndarray]:
    """[(T,) per pair]: sliding-window taggram at frame resolution. The model tags every
    `window`-frame window of each input (a chunk or a whole track; starts 0, hop, 2 hop, ... and
    one ending at the input's end, `chunking.sliding_window_starts`); a frame's value for tag k
    is the mean probability of k over the windows that contain it. xs: (96, T_i) inputs (their
    lengths may differ); pairs: (input, tag)."""
    from tagger_jax.chunking import sliding_window_starts

    starts = [sliding_window_starts(x.shape[-1], window, hop) for x in xs]
    windows = np.stack([x[:, s:s + window] for x, st in zip(xs, starts) for s in st])
    probs = windowed_probabilities(loaded, windows, batch)
    frame, at = [], 0
    for x, st in zip(xs, starts):
        cover = np.zeros((len(st), x.shape[-1]))
        for j, s in enumerate(st):
            cover[j, s:s + window] = 1
        frame.append(np.einsum("wk,wt->kt", probs[at:at + len(st)], cover) / cover.sum(0))
        at += len(st)
    return [frame[c][k] for c, k in pairs]


def format_score_tables(rows: dict, names, heading: str) -> str:
    """Markdown tables of `score_maps` rows ("all", then "detected"), one line per map; the
    deletion column only where deletion curves were computed (a NaN in every row: not run)."""
    lines = [heading, ""]
    deletion = any(not np.isnan(r["deletion"]) for r in rows.values())
    for subset in ("all", "detected"):
        n = rows[(subset, names[0])]["pairs"]
        lines += [f"**{subset}** ({n} pairs)", "",
                  "| map | pointing game | frame ROC-AUC |"
                  + (" deletion: mean p (lower = better) |" if deletion else ""),
                  "|---|---|---|" + ("---|" if deletion else "")]
        for name in names:
            r = rows[(subset, name)]
            lines.append(f"| {name} | {r['pointing']:.3f} | {r['auc']:.3f} |"
                         + (f" {r['deletion']:.3f} |" if deletion else ""))
        lines.append("")
    return "\n".join(lines)


def score_benchmark(loaded, args) -> tuple[str, dict]:
    """Maps vs exact instrument activity on `soundfont_tags`: every method, the random, energy
    and sliding-window-taggram baselines; pointing game, frame ROC-AUC, deletion. Returns the
    markdown and the numbers (`score_numbers`)."""
    data_dir = args.data_dir or loaded.config.data.data_dir
    t0 = time.perf_counter()
    xs, masks, pairs = load_score_clips(loaded, data_dir, args.split, args.clips,
                                        args.builder_config)
    if not pairs:
        raise SystemExit("no (clip, tag) pair sounds in part of a chunk only")
    print(f"{len(xs)} clips, {len(pairs)} (clip, instrument) pairs", file=sys.stderr, flush=True)
    maps, probs, _, _ = frame_maps(loaded, xs, pairs, args)
    maps["energy"] = energy_map(xs, pairs)
    window = max(8, xs.shape[-1] // 4)
    maps["taggram"] = np.stack(taggram_map(loaded, xs, pairs, window, max(1, window // 4)))
    curves = deletion_curves(loaded, xs, pairs, maps, args)
    rows = localisation_table(maps, masks, pairs, probs, curves)
    print(f"chunk scoring done in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    heading = (f"`soundfont_tags` {args.split}: {len(xs)} clips, centre {xs.shape[-1]}-frame "
               f"chunk, {len(pairs)} (clip, instrument) pairs sounding in part of the chunk "
               f"only; taggram: {window}-frame windows, hop {max(1, window // 4)}.")
    return format_score_tables(rows, list(maps), heading), score_numbers(
        rows, loaded, args, heading, level="chunk", clips=len(xs), pairs=len(pairs),
        chunk_frames=int(xs.shape[-1]), taggram_window=window, taggram_hop=max(1, window // 4),
        deletion_steps=args.deletion_steps)


def score_numbers(rows: dict, loaded, args, heading: str, **meta) -> dict:
    """What `--json` writes for `--against-score`: the run (model, split, config, the heading's
    facts as numbers) and every `score_maps` row as "subset/map" -> {"pairs", "pointing",
    "auc", "deletion", "probability"}; undefined values (a NaN: an empty subset, deletion not
    run) are null."""
    def finite(v):
        return None if isinstance(v, float) and np.isnan(v) else v

    return {"meta": dict(model=str(loaded.directory), split=args.split,
                         builder_config=args.builder_config or "default",
                         data_dir=str(args.data_dir or loaded.config.data.data_dir),
                         ig_steps=args.ig_steps, heading=heading, **meta),
            "rows": {f"{subset}/{name}": {k: finite(v) for k, v in row.items()}
                     for (subset, name), row in rows.items()}}


# Across a track: the maps `tagger-jax explain` writes for a whole clip, against its activity


def explain_tracks(loaded, source, label: str, split: str, clips: int, out_dir: Path,
                   methods=LOCALISATION_METHODS, ig_steps: int = 32, batch: int = 16,
                   progress: bool = True):
    """Explains the first `clips` records of a split with frame activity (`tag_mask`) over the
    whole record, with the project's explain run (`tagger_jax.explain.runner.explain_inputs`,
    default windows: consecutive chunks plus one ending at the end of the track, the maps
    stitched on the track's frames, exactly what `tagger-jax explain` writes for a long file).
    The tags explained for a record are those sounding in part of it only (`partial_tags`);
    records without one are left out.

    Results go to `out_dir` (NPZ + JSON per record; a rerun with the same model and settings
    reuses them, as `explain` does). Returns (tracks, run report): per explained record a dict
    with "index", "mask" (tags, T) uint8 and "res", the record's NPZ contents (`log_mel` (96, T),
    stitched maps, `probabilities` (tags,) of the track, `chunk_starts`, ...).
    """
    import dataclasses

    from tagger_jax import inference
    from tagger_jax.explain import runner

    feature = inference.Engine(loaded, batch_size=1).architecture.dataset_feature
    items, masks = [], {}
    for it in inference.source_inputs(source, feature, label, split, clips):
        mask = np.asarray(source[it.meta["index"]]["tag_mask"], np.uint8)
        ks = partial_tags(mask)
        if len(ks):
            masks[it.key] = mask
            items.append(dataclasses.replace(
                it, explain_tags=tuple(str(loaded.tags[k]) for k in ks)))
    options = runner.ExplainOptions(methods=tuple(methods), ig_steps=ig_steps, plot=False,
                                    report=False, batch_size=batch)
    run = runner.explain_inputs(loaded, items, out_dir, options, progress=progress, log=None)
    tracks = []
    for it in items:
        if it.name in run.failed:
            continue
        with np.load(Path(out_dir) / f"{it.key}.npz") as f:
            res = {k: f[k] for k in f.files}
        mask = masks[it.key]
        if res["log_mel"].shape[-1] != mask.shape[-1]:
            raise SystemExit(f"{it.name}: {res['log_mel'].shape[-1]} frames but the activity "
                             f"has {mask.shape[-1]}")
        tracks.append({"index": it.meta["index"], "name": it.name, "mask": mask, "res": res})
    return tracks, run


def track_pairs(tracks) -> list[tuple[int, int]]:
    """(track, tag) pairs: every explained tag of every track (its partial tags)."""
    return [(c, int(k)) for c, t in enumerate(tracks) for k in t["res"]["explained_tag_indices"]]


def track_method_maps(tracks, pairs) -> dict[str, list[np.ndarray]]:
    """{method: [(T,) stitched map per pair]} from the explain results: attention and rollout
    (the same for every tag), the contribution map of the pair's tag, and the gradient maps'
    time profiles (`*_time`, summed over mel bands: signed evidence per frame, as within a
    chunk)."""
    maps: dict[str, list[np.ndarray]] = {}
    for c, k in pairs:
        res = tracks[c]["res"]
        j = list(res["explained_tag_indices"]).index(k)
        for name in LOCALISATION_METHODS:
            if name in ("attention", "rollout") and name in res:
                maps.setdefault(name, []).append(res[name])
            elif name == "contribution" and name in res:
                maps.setdefault(name, []).append(res[name][k])
            elif name + "_time" in res:
                maps.setdefault(name, []).append(res[name + "_time"][j])
    return maps


def track_deletion_curves(loaded, xs, starts, pairs, maps, steps: int, chunk: int,
                          batch: int = 64, progress: bool = True) -> dict[str, np.ndarray]:
    """{name: (pairs, steps + 1)}: the track probability of the pair's tag (the mean over the
    explain windows at `starts[c]` of the window probabilities, `inference.track_probabilities`)
    as the top-ranked fractions 0, 1/steps, ..., 1 of the track's frames are replaced by the
    track's dB floor. Identical deletions (maps shared by all tags, the empty and the full set)
    are computed once."""
    from tqdm import tqdm

    requests: dict[tuple[int, bytes], int] = {}  # (track, deleted frames) -> row
    where = {n: np.zeros((len(pairs), steps + 1), np.int64) for n in maps}
    for p, (c, _) in enumerate(pairs):
        length = xs[c].shape[-1]
        counts = np.rint(np.linspace(0, length, steps + 1)).astype(int)
        for n, m in maps.items():
            order = np.argsort(-np.asarray(m[p], np.float64), kind="stable")
            for i, count in enumerate(counts):
                key = (c, np.sort(order[:count]).tobytes())
                where[n][p, i] = requests.setdefault(key, len(requests))
    keys = list(requests)
    predict = sigmoid_fn(loaded)
    probs = np.zeros((len(keys), len(loaded.tags)))
    group = max(1, batch // max(len(s) for s in starts))  # deletions per model batch
    for g in tqdm(range(0, len(keys), group), desc="track deletion", disable=not progress,
                  unit="batch"):
        windows, owner = [], []
        for r, (c, frames) in enumerate(keys[g:g + group]):
            y = xs[c].copy()
            y[:, np.frombuffer(frames, np.int64)] = xs[c].min()
            windows += [y[:, s:s + chunk] for s in starts[c]]
            owner += [r] * len(starts[c])
        out = windowed_probabilities(loaded, np.stack(windows), batch, predict)
        owner = np.asarray(owner)
        for r in range(len(keys[g:g + group])):
            probs[g + r] = out[owner == r].astype(np.float64).mean(axis=0)
    tags = np.array([k for _, k in pairs])
    return {n: probs[w, tags[:, None]] for n, w in where.items()}


def track_score_benchmark(loaded, args) -> tuple[str, dict]:
    """Maps vs exact activity across whole `soundfont_tags` clips: each method's map stitched
    by the explain run over the clip, the random, energy and sliding-window taggram baselines
    on the same frames; pointing game, frame ROC-AUC, deletion of the track probability.
    Returns the markdown and the numbers (`score_numbers`)."""
    from tagger_jax.datasets import ensure_built, load_split

    data_dir = args.data_dir or loaded.config.data.data_dir
    config = args.builder_config or None
    require_tags(loaded, "soundfont_tags")
    ensure_built("soundfont_tags", data_dir, config)
    source, tags = load_split("soundfont_tags", args.split, data_dir, config)
    require_tags(loaded, "soundfont_tags", tags)
    out_dir = Path(args.track_dir) / args.split
    t0 = time.perf_counter()
    tracks, run = explain_tracks(loaded, source, "soundfont_tags", args.split, args.clips,
                                 out_dir, ig_steps=args.ig_steps, batch=args.batch)
    print(f"explain: {len(run.done)} explained, {len(run.skipped)} reused from {out_dir}, "
          f"{len(run.failed)} failed in {time.perf_counter() - t0:.0f} s", flush=True)
    for name, error in run.failed.items():
        print(f"  failed: {name}: {error}", flush=True)
    pairs = track_pairs(tracks)
    if not pairs:
        raise SystemExit("no (clip, tag) pair sounds in part of a clip only")
    xs = [t["res"]["log_mel"] for t in tracks]
    maps = track_method_maps(tracks, pairs)
    rng = np.random.default_rng(0)
    maps["random"] = [rng.random(xs[c].shape[-1]) for c, _ in pairs]
    maps["energy"] = [xs[c].mean(axis=0) for c, _ in pairs]
    chunk = int(loaded.config.features.chunk_frames)
    fine = max(8, chunk // 4)
    maps["taggram"] = taggram_map(loaded, xs, pairs, fine, max(1, fine // 4))
    maps["taggram (chunk windows)"] = taggram_map(loaded, xs, pairs, chunk, max(1, chunk // 4))
    truth = [tracks[c]["mask"][k] for c, k in pairs]
    detected = np.array([tracks[c]["res"]["probabilities"][k] > 0.5 for c, k in pairs])
    curves = None
    if args.track_deletion_steps > 0:
        starts = [t["res"]["chunk_starts"] for t in tracks]
        curves = track_deletion_curves(loaded, xs, starts, pairs, maps,
                                       args.track_deletion_steps, chunk, batch=64)
        gap = max(abs(curves["random"][p, 0] - tracks[c]["res"]["probabilities"][k])
                  for p, (c, k) in enumerate(pairs))
        print(f"deletion curves start at the explain run's track probabilities "
              f"(max difference {gap:.1e})", flush=True)
    rows = score_maps(maps, truth, detected, curves)
    lengths = sorted({x.shape[-1] for x in xs})
    windows = sorted({len(t["res"]["chunk_starts"]) for t in tracks})
    share = np.mean([t.mean() for t in truth])
    print(f"track scoring done in {time.perf_counter() - t0:.0f} s", flush=True)
    heading = (
        f"`soundfont_tags` {args.split}: {len(tracks)} whole clip{'s' * (len(tracks) != 1)} "
        f"({'/'.join(map(str, lengths))}"
        f" frames, {'/'.join(map(str, windows))} explain windows of {chunk} frames), "
        f"{len(pairs)} (clip, instrument) pairs sounding in part of the clip only (on average "
        f"in {share:.0%} of its frames); taggram: {fine}-frame windows, hop {max(1, fine // 4)};"
        f" taggram (chunk windows): {chunk}-frame windows, hop {max(1, chunk // 4)}; deletion: "
        + (f"{args.track_deletion_steps} steps of the track probability."
           if curves is not None else "not run."))
    return format_score_tables(rows, list(maps), heading), score_numbers(
        rows, loaded, args, heading, level="track", clips=len(tracks), pairs=len(pairs),
        active_share=float(share), taggram_window=fine, taggram_hop=max(1, fine // 4),
        deletion_steps=args.track_deletion_steps if curves is not None else 0)


# Faithfulness of what is heard (auralisation, tagger_jax.explain.auralise)

LISTEN_BEGIN, LISTEN_END = "<!-- listening:begin -->", "<!-- listening:end -->"
HEARD_METHODS = ("attention", "rollout", "contribution", "grad_x_input", "integrated_gradients")


def chunk_audio(loaded, args, n_clips: int) -> list[np.ndarray]:
    """The audio of each clip's centre chunk: the `synthetic_tags/segments` clip synthesised
    again from its seed (the dataset stores log-mels only), samples of frames start..start+C-1,
    so the chunk's STFT frames are the model input's frames."""
    from tagger_jax import synth
    from tagger_jax.datasets import SPLITS, get_builder

    data_dir = args.data_dir or loaded.config.data.data_dir
    config = get_builder("synthetic_tags", data_dir, "segments").builder_config
    hop = int(loaded.config.features.hop_length)
    chunk = int(loaded.config.features.chunk_frames)
    out = []
    for i in range(n_clips):
        wave, _, _ = synth.generate_clip((config.seed, SPLITS.index(args.split), i),
                                         config.duration_s, segments=True, hop_length=hop)
        frames = 1 + len(wave) // hop
        start = (frames - chunk) // 2
        out.append(wave[start * hop:(start + chunk - 1) * hop + 1])
    return out


def heard_probabilities(loaded, waves, pairs, maps, band_maps, args):
    """{method: (pairs, 5) tag probabilities} for [original, kept, removed, random kept,
    random removed]: the model run on the log-mel of each auralised chunk.

    Time maps (attention, rollout, contribution) mask whole frames; gradient maps are mel band x
    time maps carried to STFT bins. The random mask has the same area: random frames for time
    maps, random time-frequency bins for band maps (one draw per pair and method, seeded).
    """
    import jax

    from tagger_jax import audio
    from tagger_jax.explain import auralise as A

    features = audio.features_from_config(loaded.config.features)
    predict = jax.jit(lambda v, x: jax.nn.sigmoid(loaded.model.apply(v, x)))
    rng = np.random.default_rng(1)
    mel = lambda w: audio.log_mel(w, **features.mel_kwargs)
    out = {}
    for name in HEARD_METHODS:
        specs, tags = [], []
        for p, (c, k) in enumerate(pairs):
            wave = waves[c]
            values = band_maps[name][p] if name in band_maps else maps[name][p]
            x = A.stft(wave, features.n_fft, features.hop_length)
            mask = A.stft_mask(values, x.shape[1], keep=args.listen_keep,
                               softness=args.listen_softness, sample_rate=features.sample_rate,
                               n_fft=features.n_fft)
            rand = A.random_mask(mask, args.listen_keep, rng, time_only=values.ndim == 1)
            kept, removed = A.auralise(wave, None, mask=mask, n_fft=features.n_fft,
                                       hop_length=features.hop_length)
            rkept, rremoved = A.auralise(wave, None, mask=rand, n_fft=features.n_fft,
                                         hop_length=features.hop_length)
            specs += [mel(w) for w in (wave, kept, removed, rkept, rremoved)]
            tags.append(k)
        specs = np.stack(specs)
        probs = []
        b = 5 * args.batch
        for s in range(0, len(specs), b):
            x = specs[s:s + b]
            n = len(x)
            if n < b:
                x = np.concatenate([x, np.repeat(x[:1], b - n, 0)])
            probs.append(np.asarray(predict(loaded.variables, x))[:n])
        probs = np.concatenate(probs).reshape(len(pairs), 5, -1)
        out[name] = probs[np.arange(len(pairs)), :, np.asarray(tags)]
        print(f"  listened: {name}", flush=True)
    return out


def listening_table(heard, pairs, masks) -> dict:
    """Per subset and method: mean probabilities and how often removing the map's part lowers
    the tag more than removing a random part of the same area."""
    rows = {}
    detected = np.array([heard["attention"][p, 0] > 0.5 for p in range(len(pairs))])
    for subset, keep in (("all", np.ones(len(pairs), bool)), ("detected", detected)):
        for name, h in heard.items():
            h = h[keep]
            rows[(subset, name)] = {
                "pairs": int(keep.sum()), "original": float(h[:, 0].mean()),
                "kept": float(h[:, 1].mean()), "removed": float(h[:, 2].mean()),
                "random_kept": float(h[:, 3].mean()), "random_removed": float(h[:, 4].mean()),
                "removal_beats_random": float(np.mean(h[:, 2] < h[:, 4])),
                "kept_beats_random": float(np.mean(h[:, 1] > h[:, 3]))}
    return rows


def format_listening(rows, meta) -> str:
    lines = [f"Run: {meta['date']}, {meta['device']}; model `{meta['model']}`; "
             f"{meta['clips']} clips of `synthetic_tags/segments` {meta['split']}, centre chunk "
             f"({meta['chunk']} frames), {meta['pairs']} (clip, tag) pairs whose tag sounds in "
             f"one part of the chunk only. Auralisation keeps {meta['keep']:.0%} of each map "
             f"(softness {meta['softness']}); the random mask has the same area (random frames "
             "for time maps, random time-frequency bins for gradient maps). Probabilities are "
             "the model's on the log-mel of the auralised audio.", ""]
    names = {**NAMES, "random": "random"}
    for subset, title in (("all", "All one-part tags"),
                          ("detected", "Tags the model detects in the chunk's audio (p > 0.5)")):
        n = rows[(subset, "attention")]["pairs"]
        lines += [f"**{title}** ({n} pairs)", "",
                  "| method | p original | p kept | p kept, random mask | p removed | "
                  "p removed, random mask | removal < random removal | kept > random kept |",
                  "|---|---|---|---|---|---|---|---|"]
        for name in HEARD_METHODS:
            r = rows[(subset, name)]
            lines.append(f"| {names[name]} | {r['original']:.3f} | {r['kept']:.3f} | "
                         f"{r['random_kept']:.3f} | {r['removed']:.3f} | "
                         f"{r['random_removed']:.3f} | {r['removal_beats_random']:.0%} | "
                         f"{r['kept_beats_random']:.0%} |")
        lines.append("")
    return "\n".join(lines)


def write_section(begin: str, end: str, text: str) -> None:
    doc = DOC.read_text()
    if begin not in doc or end not in doc:
        raise SystemExit(f"{DOC} has no {begin} ... {end} section")
    DOC.write_text(re.sub(re.escape(begin) + ".*?" + re.escape(end),
                          lambda _: f"{begin}\n{text}\n{end}", doc, flags=re.S))


# ---------------------------------------------------------------------------------------------
# Cost


def method_calls(model, variables, chunk: int, batch: int, ig_steps: int,
                 prefix: str = "") -> dict[str, tuple[Any, int]]:
    """{name: (call, clips per call)}: one forward pass, each method alone, and one pass of the
    authors' procedure (the last layer's attention overridden by a one-hot, full last layer: the
    procedure runs S = chunk + 1 of them per clip)."""
    import jax
    import jax.numpy as jnp

    from tagger_jax.explain import methods as M

    x = jnp.asarray(np.random.default_rng(0).normal(-20, 12, (batch, 96, chunk)), jnp.float32)
    tags = jnp.zeros((batch, 1), jnp.int32)
    forward = jax.jit(lambda v, x: model.apply(v, x))
    calls = {prefix + "forward": (lambda: forward(variables, x), batch)}
    for name in ("attention", "rollout", "contribution", "grad_x_input", "integrated_gradients"):
        fn = jax.jit(lambda v, x, t, name=name: M.explain(model, v, x, t, methods=(name,),
                                                          ig_steps=ig_steps))
        calls[prefix + name] = (lambda fn=fn: fn(variables, x, tags), batch)
    full = jax.jit(lambda v, x, o: jax.nn.sigmoid(model.apply(
        v, x, attention_override=o, full_last_layer=True)))
    one_hot = jnp.asarray(np.eye(chunk + 1, dtype=np.float32)[chunk // 2][None, None, None, :])
    calls[prefix + "one overridden pass"] = (lambda: full(variables, x, one_hot), batch)
    return calls


def paper_model_calls(args) -> dict[str, tuple[Any, int]]:
    """`method_calls` of the paper's model on one 256-frame clip, and the PyTorch twin's forward
    pass when torch is installed."""
    import jax

    from configs.paper_mtat import get_config
    from tagger_jax.models import build_model

    model = build_model(get_config().model, 50)
    x = np.zeros((1, 96, 256), np.float32)
    variables = jax.jit(model.init)(jax.random.PRNGKey(0), x)
    calls = method_calls(model, variables, 256, 1, args.ig_steps, prefix="paper: ")
    try:
        import torch

        from benchmarks import torch_twin
    except ImportError:
        return calls
    torch.set_num_threads(os.cpu_count() or 1)
    twin = torch_twin.build_twin("training").eval()
    spec = torch.from_numpy(np.random.default_rng(0).normal(-20, 12, (1, 96, 256))
                            .astype(np.float32))

    def twin_forward():
        with torch.no_grad():
            return twin(spec)

    calls["paper: torch twin forward"] = (twin_forward, 1)
    return calls


def interleaved_seconds(calls: dict[str, tuple[Any, int]], rounds: int) -> dict[str, list[float]]:
    """Seconds per clip of every call in each of `rounds` rounds, the calls interleaved within a
    round (so a change of machine load hits all of them alike), after one warm-up call each."""
    import jax

    def ready(out):
        return jax.tree.map(lambda a: a.block_until_ready() if hasattr(a, "block_until_ready")
                            else a, out)

    for call, _ in calls.values():
        ready(call())
    times: dict[str, list[float]] = {k: [] for k in calls}
    for _ in range(rounds):
        for name, (call, clips) in calls.items():
            t0 = time.perf_counter()
            ready(call())
            times[name].append((time.perf_counter() - t0) / clips)
    return times


# ---------------------------------------------------------------------------------------------
# Report


NAMES = {"attention": "attention (Fig. 1)", "rollout": "attention rollout",
         "contribution": "contribution (Fig. 2)", "grad_x_input": "gradient x input",
         "integrated_gradients": "integrated gradients",
         "random": "random map (chance; deletion in random order)"}


def format_tables(rows, completeness, meta) -> str:
    lines = [f"Run: {meta['date']}, {meta['device']}; model `{meta['model']}` "
             f"(validation/test ROC-AUC in its workdir), {meta['clips']} clips of "
             f"`synthetic_tags/segments` {meta['split']}, centre 256-frame chunk, "
             f"{meta['pairs']} (clip, tag) pairs whose tag sounds in one part of the chunk only; "
             f"integrated gradients with {meta['ig_steps']} steps from the dB floor.", ""]
    for subset, title in (("all", "All one-part tags"),
                          ("detected", "Only tags the model detects in the chunk (p > 0.5)")):
        n = rows[(subset, "attention")]["pairs"]
        lines += [f"**{title}** ({n} pairs)", "",
                  "| method | pointing game | frame ROC-AUC | deletion: mean p (lower = better) |",
                  "|---|---|---|---|"]
        for name in list(LOCALISATION_METHODS) + ["random"]:
            r = rows[(subset, name)]
            lines.append(f"| {NAMES[name]} | {r['pointing']:.3f} | {r['auc']:.3f} | "
                         f"{r['deletion']:.3f} |")
        lines += ["", f"Mean probability of these tags before deletion: {r['probability']:.3f}.",
                  ""]
    lines += ["Integrated gradients completeness on logits (|sum of attributions - (f(x) - "
              f"f(baseline))|): max {completeness['max_abs_gap']:.4f}, median relative "
              f"{completeness['median_rel_gap']:.4f}, 95th percentile relative "
              f"{completeness['p95_rel_gap']:.4f}.", ""]
    return "\n".join(lines)


def timing_model(args):
    """The model to time: --checkpoint's, else configs/synthetic_cpu.py's architecture with
    random weights (the cost does not depend on the weights)."""
    if args.checkpoint:
        from tagger_jax.checkpoint import load_model

        loaded = load_model(args.checkpoint)
        return loaded.model, loaded.variables, int(loaded.config.features.chunk_frames), \
            str(loaded.directory)
    import jax

    from configs.synthetic_cpu import get_config
    from tagger_jax import synth
    from tagger_jax.models import build_model

    config = get_config()
    chunk = int(config.features.chunk_frames)
    model = build_model(config.model, len(synth.SYNTH_TAGS))
    variables = jax.jit(model.init)(jax.random.PRNGKey(0), np.zeros((1, 96, chunk), np.float32))
    return model, variables, chunk, "configs/synthetic_cpu.py, random weights"


def format_timings(times: dict[str, list[float]], meta) -> str:
    """The cost tables (median [range] over the rounds, and the ratio of the medians to the
    forward pass of the same model) with the date, machine and load average around the run."""
    lines = [f"Run: {meta['date']}, {meta['device']}; benchmark model: {meta['timing_model']}; "
             f"integrated gradients with {meta['ig_steps']} steps; {meta['rounds']} rounds, "
             "every computation once per round, interleaved; median [min - max] over the rounds; "
             f"load average (1 min) {meta['load_before']:.1f} at the start, "
             f"{meta['load_after']:.1f} at the end.", ""]
    for title, prefix in (("Benchmark model (synthetic_cpu), milliseconds per clip, batch "
                           f"{meta['batch']}", ""),
                          ("Paper model (c = 16, 512 channels, 256 frames, random weights), "
                           "milliseconds per clip, batch 1", "paper: ")):
        rows = {k[len(prefix):]: np.asarray(v) for k, v in times.items()
                if k.startswith(prefix) and (prefix or not k.startswith("paper: "))}
        if not rows:
            continue
        fwd = float(np.median(rows["forward"]))
        lines += [f"**{title}**", "", "| computation | ms per clip | x forward pass |",
                  "|---|---|---|"]
        for k, v in rows.items():
            med = float(np.median(v))
            base = float(np.median(rows["torch twin forward"])) if k.startswith("torch") else fwd
            lines.append(f"| {k} | {1000 * med:.1f} [{1000 * v.min():.1f} - {1000 * v.max():.1f}]"
                         f" | {med / base:.2f} |")
        s_passes = 256 + 1 if prefix else meta["chunk"] + 1
        over = float(np.median(rows["one overridden pass"]))
        lines.append(f"| authors' procedure: S = {s_passes} overridden passes (S x the median "
                     f"above) | {1000 * s_passes * over:.1f} | {s_passes * over / fwd:.1f} |")
        if "torch twin forward" in rows:
            tw = float(np.median(rows["torch twin forward"]))
            lines.append(f"| torch twin: the authors' loop of {s_passes} passes (S x its "
                         f"forward) | {1000 * s_passes * tw:.1f} | {s_passes:.1f} |")
        lines.append("")
    return "\n".join(lines)


def figures(loaded, xs, masks, pairs, maps, curves, probs, args) -> list[Path]:
    """An example clip in the paper's layout with the ground truth, and the deletion curves."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from tagger_jax.explain.plotting import Row, plot_explanation

    FIGURES.mkdir(parents=True, exist_ok=True)
    tags = loaded.tags
    # The example: the first clip with two detected one-part tags in different parts.
    by_clip: dict[int, list[int]] = {}
    for p, (c, k) in enumerate(pairs):
        if probs[c, k] > 0.5:
            by_clip.setdefault(c, []).append(p)
    chosen = next((ps for ps in by_clip.values()
                   if len({int(masks[pairs[q][0], pairs[q][1], 0]) for q in ps}) == 2), None)
    chosen = (chosen or next(iter(by_clip.values()), [0]))[:2]
    c = pairs[chosen[0]][0]
    rows = []
    for p in chosen:
        rows.append(Row(f"truth:\n{tags[pairs[p][1]]}", masks[c, pairs[p][1]].astype(float)))
    rows.append(Row("attention\n(Fig. 1)", maps["attention"][chosen[0]]))
    for name, label in (("contribution", "contribution"), ("integrated_gradients", "int. grad."),):
        for p in chosen:
            rows.append(Row(f"{label}:\n{tags[pairs[p][1]]}", maps[name][p],
                            signed=name != "contribution"))
    step = loaded.config.features.hop_length / loaded.config.features.sample_rate
    example = plot_explanation(
        FIGURES / "explanations_example.png", xs[c], step, rows, step,
        title=f"synthetic_tags/segments {args.split} clip {c}, centre chunk: "
              + ", ".join(f"{tags[pairs[p][1]]} p={probs[c, pairs[p][1]]:.2f}" for p in chosen))
    fig = Figure(figsize=(6.5, 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    frac = np.linspace(0, 1, args.deletion_steps + 1)
    for name, curve in curves.items():
        label = NAMES.get(name, name)
        ax.plot(frac, curve.mean(0), label=label,
                linestyle="--" if name == "random" else "-")
    ax.set_xlabel("fraction of frames deleted (top-ranked first)")
    ax.set_ylabel("mean probability of the tag")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    deletion = FIGURES / "explanations_deletion.png"
    fig.savefig(deletion, dpi=110)
    return [example, deletion]


def write_docs(text: str) -> None:
    write_section(BEGIN, END, text)


def run_timings(args, model, variables, chunk: int, model_name: str,
                meta: dict) -> tuple[str, dict[str, list[float]]]:
    """Times every method (benchmark model and, unless skipped, the paper's) in interleaved
    rounds, prints the tables and, with --write-docs, replaces the timing section of
    docs/explanations.md. Returns (text, {name: seconds per clip per round})."""
    calls = method_calls(model, variables, chunk, args.batch, args.ig_steps)
    if not args.skip_paper_timing:
        calls.update(paper_model_calls(args))
    load_before = os.getloadavg()[0]
    times = interleaved_seconds(calls, args.rounds)
    meta = dict(meta, timing_model=model_name, load_before=load_before, chunk=chunk,
                load_after=os.getloadavg()[0], rounds=args.rounds)
    text = format_timings(times, meta)
    print(text)
    if args.write_docs:
        write_section(TIMING_BEGIN, TIMING_END, text)
    return text, times


def against_score(args) -> int:
    """`--against-score`: prints the tables; `--json` gets `score_numbers`."""
    from tagger_jax.checkpoint import load_model

    loaded = load_model(args.checkpoint)
    text, numbers = (track_score_benchmark if args.track else score_benchmark)(loaded, args)
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps(numbers, indent=2))
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    g = p.add_mutually_exclusive_group()
    g.add_argument("--checkpoint", help="model trained on synthetic_tags (model dir or workdir)")
    g.add_argument("--workdir", default=str(ROOT / "runs" / "explanations_benchmark"),
                   help="workdir to train configs/synthetic_cpu.py into when it has no model")
    p.add_argument("--data-dir", default=None, help="TFDS data dir (default: the model's)")
    p.add_argument("--split", default="test")
    p.add_argument("--against-score", action="store_true",
                   help="score the maps and their baselines against the exact instrument activity "
                        "of soundfont_tags (a model trained on it: --checkpoint) and stop")
    p.add_argument("--builder-config", default="", help="soundfont_tags config (--against-score)")
    p.add_argument("--track", action="store_true",
                   help="with --against-score: score the maps `explain` stitches over each whole "
                        "clip against its activity, instead of the centre chunk's")
    p.add_argument("--track-dir", default=str(ROOT / "runs" / "explanations_track"),
                   help="--track: where the explain run writes (and reuses) its results")
    p.add_argument("--track-deletion-steps", type=int, default=4,
                   help="--track: deletion steps of the track probability (0: no deletion)")
    p.add_argument("--clips", type=int, default=100)
    p.add_argument("--batch", type=int, default=16, help="clips per device batch")
    p.add_argument("--ig-steps", type=int, default=32)
    p.add_argument("--deletion-steps", type=int, default=16)
    p.add_argument("--skip-paper-timing", action="store_true")
    p.add_argument("--rounds", type=int, default=5,
                   help="timing rounds (every computation once per round, interleaved)")
    p.add_argument("--json", default=None, help="write all numbers here")
    p.add_argument("--parts", default="localisation,listening",
                   help="comma-separated parts to run: localisation (scores, timings, figures), "
                        "listening (faithfulness of the auralised maps), timing (the cost tables "
                        "alone: no data, no trained model needed)")
    p.add_argument("--listen-clips", type=int, default=None,
                   help="clips for the listening part (default: --clips)")
    p.add_argument("--listen-keep", type=float, default=0.5)
    p.add_argument("--listen-softness", type=float, default=0.0)
    p.add_argument("--write-docs", action="store_true",
                   help="replace the benchmark section of docs/explanations.md and its figures")
    args = p.parse_args(argv)
    if args.clips < 1:
        p.error(f"--clips must be at least 1, got {args.clips}")
    if args.json and not Path(args.json).expanduser().absolute().parent.is_dir():
        p.error(f"--json {args.json}: its folder does not exist")

    import jax

    if args.against_score:
        from tagger_jax import errors

        if not args.checkpoint:
            raise SystemExit("--against-score needs --checkpoint (a model trained on "
                             "soundfont_tags)")
        return errors.guarded(against_score, args, prog="benchmarks/explanations.py")
    parts = set(args.parts.split(","))
    device = jax.devices()[0]
    base_meta = {"date": time.strftime("%Y-%m-%d"), "ig_steps": args.ig_steps,
                 "batch": args.batch,
                 "device": f"{device.platform} ({getattr(device, 'device_kind', '')}, "
                           f"{os.cpu_count()} CPU cores)"}
    if parts == {"timing"}:
        model, variables, chunk, name = timing_model(args)
        _, times = run_timings(args, model, variables, chunk, name, base_meta)
        if args.json:
            Path(args.json).write_text(json.dumps({"timings": times}))
        return 0
    loaded, train_seconds = get_model(args)
    t0 = time.perf_counter()
    xs, masks, pairs = load_clips(loaded, args)
    print(f"{len(xs)} clips, {len(pairs)} (clip, one-part tag) pairs", flush=True)
    maps, probs, completeness, band_maps = frame_maps(loaded, xs, pairs, args)
    meta = dict(base_meta, clips=len(xs), pairs=len(pairs), split=args.split,
                model=str(loaded.directory.relative_to(ROOT) if loaded.directory.is_relative_to(
                    ROOT) else loaded.directory))
    numbers = {"meta": meta, "train_seconds": train_seconds, "completeness": completeness}
    if "listening" in parts:
        n = min(args.listen_clips or len(xs), len(xs))
        sub = [q for q, (c, _) in enumerate(pairs) if c < n]
        waves = chunk_audio(loaded, args, n)
        heard = heard_probabilities(loaded, waves, [pairs[q] for q in sub],
                                    {m: v[sub] for m, v in maps.items()},
                                    {m: v[sub] for m, v in band_maps.items()}, args)
        listen_rows = listening_table(heard, [pairs[q] for q in sub], masks)
        listen_meta = dict(meta, clips=n, pairs=len(sub), chunk=xs.shape[-1],
                           keep=args.listen_keep, softness=args.listen_softness)
        listen_text = format_listening(listen_rows, listen_meta)
        print(listen_text)
        numbers["listening"] = {f"{s}/{m}": r for (s, m), r in listen_rows.items()}
        if args.write_docs:
            write_section(LISTEN_BEGIN, LISTEN_END, listen_text)
    if "localisation" in parts:
        curves = deletion_curves(loaded, xs, pairs, maps, args)
        rows = localisation_table(maps, masks, pairs, probs, curves)
        print(f"localisation done in {time.perf_counter() - t0:.0f} s", flush=True)
        text = format_tables(rows, completeness, meta)
        print(text)
        _, times = run_timings(args, loaded.model, loaded.variables, xs.shape[-1],
                               meta["model"], meta)
        numbers.update(localisation={f"{s}/{m}": r for (s, m), r in rows.items()},
                       timings=times,
                       deletion_curves={k: v.mean(0).tolist() for k, v in curves.items()})
        if args.write_docs:
            paths = figures(loaded, xs, masks, pairs, maps, curves, probs, args)
            write_docs(text + "\n" + "\n".join(
                f"![{p.stem}](figures/{p.name})" for p in paths) + "\n")
            print(f"wrote {DOC} and {', '.join(str(p) for p in paths)}")
    if args.json:
        Path(args.json).write_text(json.dumps(numbers, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
