"""Tagging audio files with a trained or imported model: track-level tags and taggrams.

For each input the track-level probabilities follow the paper's protocol (the mean of the sigmoid
outputs of 16 evenly spaced chunks, as `evaluate` computes them), and the taggram is the per-chunk
probabilities over time: the same 16 chunks by default, or sliding windows every `hop_s` seconds.
Chunks of many files share fixed-size device batches (one compilation); files are decoded in a
thread pool while the device works. A broken file becomes an entry with an `error` and never stops
the others.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from tagger_jax import audio, chunking, outputs
from tagger_jax.checkpoint import LoadedModel
from tagger_jax.evaluation import make_predict_fn

INPUT_SUFFIXES = audio.INPUT_SUFFIXES


def collect_inputs(paths: Iterable[str | os.PathLike],
                   skipped: list[tuple[Path, str]] | None = None) -> list[Path]:
    """Files named directly (whatever their suffix: they fail later with a clear error if they are
    not audio) plus the inputs `audio.scan_inputs` finds in named directories; the files it
    leaves out, with the reason, are appended to `skipped` if given."""
    found, left_out = audio.scan_inputs(paths)
    if skipped is not None:
        skipped.extend(left_out)
    return found


@dataclasses.dataclass
class _Prepared:
    """One decoded input cut into chunks: the first `num_eval` are the paper's 16 chunks."""

    index: int
    chunks: np.ndarray  # (n, *example_shape)
    num_eval: int
    taggram_starts: np.ndarray  # start of each taggram chunk, in time steps (frames or samples)
    taggram_rows: np.ndarray  # which rows of `chunks` form the taggram
    seconds_per_step: float
    duration_s: float
    warnings: list[str]
    audio_warnings: dict[str, str] = dataclasses.field(default_factory=dict)


class Tagger:
    """Batched inference for one loaded model; reuse it for many calls (compiles once)."""

    def __init__(self, loaded: LoadedModel, batch_size: int = 64):
        self.loaded = loaded
        self.batch_size = int(batch_size)
        self.features = audio.features_from_config(loaded.config.get("features"))
        self.waveform = loaded.config.model.get("architecture", "pons_won") == "lee_won"
        self.chunk = chunking.WAVEFORM_CHUNK if self.waveform else self.features.chunk_frames
        self._predict = make_predict_fn(loaded.model)  # memoised: one compilation per model

    @property
    def seconds_per_step(self) -> float:
        if self.waveform:
            return 1.0 / self.features.sample_rate
        return self.features.hop_length / self.features.sample_rate

    def prepare(self, index: int, path: Path, hop_s: float | None) -> _Prepared:
        """Decodes one input and cuts its chunks (runs in worker threads)."""
        # No `warnings` machinery here: catch_warnings is not thread-safe. The note goes into the
        # result (and the CLI prints it).
        x, audio_notes = audio.read_input(path, self.features, waveform=self.waveform)
        steps = x.shape[-1]
        x, padded = chunking.pad_to_length(x, self.chunk)
        notes = [f"{audio.display_path(path)}: only {steps} time steps, shorter than one chunk of {self.chunk}; the "
                 "clip was repeated to fill the chunk"] if padded else []
        eval_starts = chunking.eval_chunk_starts(x.shape[-1], self.chunk, self.features.eval_chunks)
        if hop_s is None:
            starts, rows = eval_starts, np.arange(len(eval_starts))
            extra = np.empty((0,), np.int64)
        else:
            hop = max(1, int(round(hop_s / self.seconds_per_step)))
            extra = chunking.sliding_window_starts(x.shape[-1], self.chunk, min(hop, self.chunk))
            starts, rows = extra, len(eval_starts) + np.arange(len(extra))
        chunks = np.stack([x[..., s:s + self.chunk] for s in np.concatenate([eval_starts, extra])])
        return _Prepared(index, chunks.astype(np.float32), len(eval_starts), starts, rows,
                         self.seconds_per_step, steps * self.seconds_per_step, notes,
                         audio_notes)

    def _run(self, chunks: np.ndarray) -> np.ndarray:
        """Sigmoid outputs for (n, ...) chunks, in fixed-size batches (last one zero-padded)."""
        out = []
        for start in range(0, len(chunks), self.batch_size):
            part = chunks[start:start + self.batch_size]
            pad = self.batch_size - len(part)
            if pad:
                part = np.concatenate([part, np.zeros((pad,) + part.shape[1:], part.dtype)])
            probs = self._predict(self.loaded.variables, jnp.asarray(part))
            out.append(np.asarray(probs)[:len(part) - pad])
        return np.concatenate(out) if out else np.zeros((0, len(self.loaded.tags)), np.float32)

    def tag(self, paths: Sequence[Path], *, hop_s: float | None = None, top_k: int = 5,
            progress: bool = True, num_threads: int | None = None,
            on_result: Callable[[dict], None] | None = None) -> list[dict]:
        """One result dict per path, in order; errors are results with an `error` field."""
        if hop_s is not None and hop_s <= 0:
            raise ValueError(f"--hop must be positive, got {hop_s}")
        results: list[dict | None] = [None] * len(paths)
        threads = num_threads or min(8, (os.cpu_count() or 2))
        bar = tqdm(total=len(paths), unit="file", desc="tagging", disable=not progress,
                   file=sys.stderr)
        pending: list[_Prepared] = []

        def flush():
            if not pending:
                return
            probs = self._run(np.concatenate([p.chunks for p in pending]))
            offset = 0
            for p in pending:
                mine = probs[offset:offset + len(p.chunks)]
                offset += len(p.chunks)
                results[p.index] = self._result(paths[p.index], p, mine, top_k)
                if on_result:
                    on_result(results[p.index])
                bar.update(1)
            pending.clear()

        with concurrent.futures.ThreadPoolExecutor(threads) as pool:
            # A bounded window of files in flight keeps host memory flat on long lists.
            for i, prepared in _prepare_ahead(pool, self.prepare, paths, hop_s, 2 * threads):
                if isinstance(prepared, _Prepared):
                    pending.append(prepared)
                else:
                    results[i] = {"file": audio.display_path(paths[i]),
                                  "error": _message(paths[i], prepared)}
                    if on_result:
                        on_result(results[i])
                    bar.update(1)
                if sum(len(p.chunks) for p in pending) >= self.batch_size:
                    flush()
            flush()
        bar.close()
        return [r for r in results if r is not None]

    def _result(self, path: Path, p: _Prepared, probs: np.ndarray, top_k: int) -> dict:
        tags = list(self.loaded.tags)
        track = probs[:p.num_eval].mean(axis=0)
        order = np.argsort(-track)[:top_k]
        result: dict[str, Any] = {
            "file": audio.display_path(path),
            "tags": tags,
            "probabilities": [round(float(v), 6) for v in track],
            "top_tags": [{"tag": tags[k], "probability": round(float(track[k]), 6)}
                         for k in order],
            "duration_s": round(p.duration_s, 3),
            "chunk_seconds": round(self.chunk * p.seconds_per_step, 3),
            "chunk_starts_s": [round(float(s) * p.seconds_per_step, 3) for s in p.taggram_starts],
            "chunk_probabilities": np.round(probs[p.taggram_rows], 6).tolist(),
        }
        if p.warnings:
            result["warnings"] = p.warnings
        if p.audio_warnings:  # {code: message}, docs/audio.md
            result["audio_warnings"] = p.audio_warnings
        return result


def _prepare_ahead(pool: concurrent.futures.Executor, prepare: Callable, paths: Sequence[Path],
                   hop_s: float | None, window: int) -> Iterator[tuple[int, Any]]:
    """(index, _Prepared or the input's error) in input order, at most `window` files in flight."""
    futures: dict[int, concurrent.futures.Future] = {}
    for i in range(len(paths)):
        futures[i] = pool.submit(prepare, i, Path(paths[i]), hop_s)
        while len(futures) >= window or (i == len(paths) - 1 and futures):
            j = min(futures)
            try:
                yield j, futures.pop(j).result()
            except (audio.InputError, OSError, ValueError) as e:
                yield j, e


def _message(path: Path, error: Exception) -> str:
    text, name = str(error), audio.display_path(path)
    return text if text.startswith(name) else f"{name}: {text}"


def write_json(results: list[dict], output: Path) -> None:
    """Writes atomically (unique temporary file + rename, `outputs.atomic_write_json`) so an
    interrupted run never leaves half a file nor a temporary one."""
    output.parent.mkdir(parents=True, exist_ok=True)
    outputs.atomic_write_json(output, results)


class ResultStore:
    """The `--output` file as results arrive: rewritten atomically at most every `every_s` seconds,
    so an interrupted run keeps what it finished and `--resume` picks up the rest."""

    def __init__(self, output: Path | None, done: list[dict], every_s: float = 10.0):
        self.output, self.results, self.every_s = output, list(done), every_s
        self._last = time.monotonic()

    def add(self, result: dict) -> None:
        self.results.append(result)
        if self.output is not None and time.monotonic() - self._last > self.every_s:
            write_json(self.results, self.output)
            self._last = time.monotonic()

    def close(self) -> None:
        if self.output is not None:
            write_json(self.results, self.output)


def finished_results(output: Path) -> list[dict]:
    """Successful results of an earlier run, for `--resume` (failed inputs are tried again)."""
    try:
        data = json.loads(output.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{output}: cannot resume from it ({e})") from None
    if not isinstance(data, list):
        raise ValueError(f"{output}: cannot resume: expected a JSON list of results")
    return [r for r in data if isinstance(r, dict) and "error" not in r and "file" in r]
