"""Tagging audio files with a trained or imported model: track-level tags and taggrams.

A thin consumer of `tagger_jax.inference`: windows of many files share fixed-size batches split
over the local devices, files are read ahead in threads, and a file's track-level probabilities
are `inference.track_probabilities` of its windows (the same numbers `explain` reports). By
default the windows cover the whole track (a window every `hop_s` seconds, default one window
length, the last one ending at the end of the track); `windows=PAPER` uses the paper's 16 evenly
spaced chunks. The taggram is the per-window probabilities over time. A broken file becomes an
entry with an `error` and never stops the others.

With several processes (`jax.distributed`), each process tags its share of the files and writes
its results to its own part file next to the output; process 0 merges them (`merge_parts`).
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
from tqdm import tqdm

from tagger_jax import audio, inference, outputs
from tagger_jax.progress import bar_interval
from tagger_jax.inference import COVER, PAPER, WindowPlan  # noqa: F401 (re-exported)


def collect_inputs(paths: Iterable[str | os.PathLike],
                   skipped: list[tuple[Path, str]] | None = None,
                   exclude: Iterable[str | os.PathLike] = ()) -> list[Path]:
    """Files named directly plus the inputs found recursively in named directories
    (`inference.discover`, deciding by `audio.scan_inputs`), in order, without duplicates; files
    left out are appended to `skipped` with the reason, if given; `exclude` (the run's own
    outputs) are left out unlisted."""
    return [p for p, _ in inference.discover(paths, skipped, exclude)]


class Tagger:
    """Batched, sharded tagging for one loaded model; reuse it for many calls (compiles once)."""

    def __init__(self, loaded, batch_size: int = 64, devices: Sequence[Any] | None = None):
        self.engine = inference.Engine(loaded, batch_size=batch_size, devices=devices)
        self.loaded = loaded

    def tag(self, paths: str | os.PathLike | inference.Input
            | Iterable[str | os.PathLike | inference.Input], *,
            hop_s: float | None = None, windows: str = COVER, num_chunks: int = 16,
            top_k: int = 5, progress: bool = True,
            on_result: Callable[[dict], None] | None = None) -> list[dict]:
        """One result dict per path, in order; errors are results with an `error` field.

        `paths`: audio files (one path alone is taken as a list of one), or inputs made by the
        engine (`self.engine.array_inputs(waves, sample_rate)`: audio in memory); a directory's
        files are `collect_inputs([directory])`. TypeError for anything else."""
        single = (str, bytes, os.PathLike, inference.Input)
        paths = [paths] if isinstance(paths, single) else list(paths)
        other = next((p for p in paths if not isinstance(p, (str, os.PathLike, inference.Input))),
                     None)
        if other is not None:
            raise TypeError(f"Tagger.tag reads audio files, got a {type(other).__name__} among "
                            "the paths; audio in memory: tag(tagger.engine.array_inputs(waves, "
                            "sample_rate)) (docs/python.md)")
        plan = WindowPlan(windows, hop_s, num_chunks)
        plan.checked(self.engine.geometry)  # a hop longer than a window fails once, here
        items = [dataclasses.replace(p, key=str(i)) if isinstance(p, inference.Input) else
                 inference.Input(key=str(i), name=audio.display_path(p),
                                 load=lambda p=Path(p): self.engine.read_checked(p),
                                 fingerprint=inference.file_fingerprint(Path(p)),
                                 meta={inference.INPUT_PATH: audio.display_path(
                                     Path(p).absolute())})
                 for i, p in enumerate(paths)]
        results: list[dict | None] = [None] * len(items)
        bar = tqdm(total=len(items), unit="file", desc=inference.share_label("tagging"),
                   disable=not progress, file=sys.stderr, **bar_interval())

        def emit(index: int, result: dict) -> None:
            results[index] = result
            if on_result:
                on_result(result)
            bar.update(1)

        signature = run_signature(self.loaded, plan)

        def done(p: inference.Prepared, out: dict) -> None:
            result = self.result(p, out["probabilities"], plan, top_k)
            path = {k: p.item.meta[k] for k in (inference.INPUT_PATH,) if k in p.item.meta}
            emit(int(p.item.key), {**result, "signature": signature,
                                   "fingerprint": p.item.fingerprint, **path})

        def failed(item: inference.Input, error: BaseException) -> None:
            emit(int(item.key), {"file": item.name, "error": inference.named(item.name, error)})

        try:
            self.engine.run(items, plan, self.engine.predict_fn(), done, failed,
                            self.engine.rows_postfix(bar, lambda key: items[int(key)].name))
        finally:
            bar.close()
        return [r for r in results if r is not None]

    def result(self, p: inference.Prepared, window_probs: np.ndarray, plan: WindowPlan,
               top_k: int) -> dict:
        """The JSON-ready result of one input from its per-window probabilities."""
        geom = self.engine.geometry
        tags = list(self.engine.tags)
        track = inference.track_probabilities(window_probs)
        result: dict[str, Any] = {
            "file": p.item.name,
            "tags": tags,
            "probabilities": rounded(track, PROBABILITY_DECIMALS),
            "top_tags": inference.top_tags(track, tags, top_k),
            "duration_s": rounded(p.duration_s, SECONDS_DECIMALS),
            "num_steps": int(p.length),
            **plan.describe(),
            "chunk_seconds": rounded(geom.chunk_s, SECONDS_DECIMALS),
            "chunk_starts_s": rounded(np.asarray(p.starts) * geom.step_s, SECONDS_DECIMALS),
            "chunk_probabilities": rounded(window_probs, PROBABILITY_DECIMALS),
        }
        if p.notes:
            result["warnings"] = list(p.notes)
        if p.warnings:  # {code: message}, docs/audio.md
            result["audio_warnings"] = dict(p.warnings)
        return result


RESULT_FORMAT = "tags/1"  # part of every result's signature (bump when results change)


def run_signature(loaded, plan: WindowPlan) -> str:
    """A tag result's "signature": the model files and window settings it came from. `tag
    --resume` reuses a result only if its signature and its input's fingerprint are unchanged."""
    return inference.run_signature(loaded, plan, RESULT_FORMAT)


PROBABILITY_DECIMALS = 6  # tags.json: probabilities (track and per window)
SECONDS_DECIMALS = 3  # tags.json: times and durations (1 ms)


def rounded(values: Any, decimals: int) -> Any:
    """A number or array as JSON-ready Python floats (nested lists) rounded to `decimals` in
    float64, so the JSON holds the short decimal (a float32 0.1234567 rounded in float32 would be
    written as 0.12345699965953827)."""
    out = np.round(np.asarray(values, np.float64), decimals)
    return out.tolist() if out.ndim else float(out)


CSV_FIXED_COLUMNS = ("file", "duration_s")  # then one column per tag


def write_csv(results: Sequence[dict], output: str | os.PathLike) -> bool:
    """The track-level probabilities of `results` (successful tag results of one model, in the
    order given) as a CSV table: a header `file,duration_s,TAG,...` (the model's tag order),
    one row each; written atomically, unless `output` already holds exactly that table (returns
    whether it wrote). Python's csv quoting (names with commas or quotes). ValueError, nothing
    written, for a failed result (one with an `error` field) or results of models with other
    tags."""
    import csv
    import io

    failed = next((r for r in results if "error" in r), None)
    if failed is not None:
        raise ValueError(f"{output}: {failed.get('file')} has no probabilities ({failed['error']}"
                         "); a table holds the successful results: pass [r for r in results if "
                         "'error' not in r]")
    output = Path(output)
    tags = list(results[0]["tags"]) if results else []
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow([*CSV_FIXED_COLUMNS, *tags])
    for r in results:
        if list(r["tags"]) != tags:
            raise ValueError(f"{output}: {r['file']} was tagged with other tags than "
                             f"{results[0]['file']}; one table holds one model's results")
        writer.writerow([r["file"], r["duration_s"], *r["probabilities"]])
    try:
        if output.read_text(encoding="utf-8", errors="surrogateescape") == text.getvalue():
            return False  # (a --resume that reused every result: nothing to write)
    except OSError:
        pass
    output.parent.mkdir(parents=True, exist_ok=True)
    outputs.atomic_write_text(output, text.getvalue())
    return True


def write_json(results: list[dict], output: Path) -> None:
    """Writes atomically (unique temporary file + rename, `outputs.atomic_write_json`) so an
    interrupted run never leaves half a file nor a temporary one."""
    output.parent.mkdir(parents=True, exist_ok=True)
    outputs.atomic_write_json(output, results)


class ResultStore:
    """The `--output` file as results arrive: rewritten atomically when a result comes at least
    `every_s` seconds after the last write, and at least ten times that write's duration (a
    large file is rewritten less often: the writes stay under a tenth of the run), so a run
    stopped even by SIGKILL keeps what it finished up to then and `--resume` picks up the rest;
    the last write (`close`) puts them in input order."""

    def __init__(self, output: Path | None, done: list[dict], every_s: float = 1.0,
                 order: Sequence[str] = ()):
        self.output, self.results, self.every_s = output, list(done), every_s
        self.rank = {name: i for i, name in enumerate(order)}  # the final file's input order
        self.kept = [r["file"] for r in done]  # the order of the results carried in
        self.written = False  # whether `close` changed the file
        self._last = time.monotonic()
        self._wait = every_s

    def add(self, result: dict) -> None:
        self.results.append(result)
        if self.output is not None and time.monotonic() - self._last > self._wait:
            start = time.monotonic()
            write_json(self.results, self.output)
            self._last = time.monotonic()
            self._wait = max(self.every_s, 10.0 * (self._last - start))

    def close(self) -> None:
        """Writes the results in input order (`order`); a kept result of an input this run was
        not given stays where it was, before the result it preceded (a trial's result of a
        deleted file moved to the front). `written` says whether the file changed."""
        if self.output is not None:
            end = len(self.rank)
            before: dict[str, int] = {}  # a kept result of another input: the rank of the next
            for name in reversed(self.kept):  # kept result of this run's inputs
                if name in self.rank:
                    end = self.rank[name]
                else:
                    before[name] = end
            self.results.sort(key=lambda r: (self.rank[r["file"]], 1) if r["file"] in self.rank
                              else (before.get(r["file"], len(self.rank)), 0))
            self.written = not self._unchanged()
            if self.written:
                write_json(self.results, self.output)

    def _unchanged(self) -> bool:
        """Whether the output file already holds exactly these results: a run that reused every
        one leaves it as it was (on a full disk it failed for nothing, a trial)."""
        if len(self.results) != len(self.kept) or not self.output.exists():
            return False
        try:
            return _read_results(self.output) == self.results
        except Exception:  # noqa: BLE001 (unreadable: written again)
            return False


def part_path(output: Path, process: int) -> Path:
    """Where process `process` of a multi-process run keeps its results before the merge."""
    return output.with_name(f"{output.name}.part{process}")


def _read_results(path: Path) -> list[dict]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot resume from it ({e})") from None
    if not isinstance(data, list):
        raise ValueError(f"{path}: cannot resume: expected a JSON list of results")
    return [r for r in data if isinstance(r, dict) and "file" in r]


def own_output(path: Path, table: bool = False) -> bool:
    """Whether the existing file `path` may be replaced by `tag`'s --output (`table` False: an
    empty file or a JSON list of results, each a dict with a "file") or --csv (`table` True: an
    empty file or a table whose header starts `file,duration_s`, as `write_csv` writes it).
    Anything else (an audio input, someone's notes) is not this tool's to replace; a file that
    cannot be read counts as replaceable here, and the run's own open or write then fails."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return True
    if not head.strip():
        return True
    if table:
        return head.lstrip(b"\xef\xbb\xbf").startswith(",".join(CSV_FIXED_COLUMNS).encode())
    if not head.lstrip().startswith(b"["):  # not JSON at all: not read whole (an audio file)
        return False
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, list) and all(isinstance(r, dict) and "file" in r for r in data)


def finished_results(output: Path) -> list[dict]:
    """Results of earlier runs, for `--resume`: the successes in the output file and in the part
    files any process of an interrupted multi-process run left, and the failures of inputs with
    no success (the caller tries its own inputs' failures again and keeps the others', so the
    file goes on recording them)."""
    found: dict[str, dict] = {}
    failures: dict[str, dict] = {}
    sources = [output] if output.exists() else []
    sources += part_files(output)
    for path in sources:
        for r in _read_results(path):
            (failures if "error" in r else found).setdefault(r["file"], r)
    found.update({f: r for f, r in failures.items() if f not in found})
    return list(found.values())


def with_top_k(result: dict, top_k: int) -> dict:
    """A stored tag result with its "top_tags" taken again from its probabilities: a reused
    result shows the `top_k` of the run that reuses it."""
    if "probabilities" not in result or "tags" not in result:
        return result
    top = inference.top_tags(np.asarray(result["probabilities"], np.float64),
                             list(result["tags"]), top_k)
    return {**result, "top_tags": top}


def merge_parts(output: Path, order: Sequence[str], processes: int) -> list[dict]:
    """Process 0 after all processes finished: the parts' results (and those already in the
    output) in input order, written to `output`; the part files are removed."""
    by_file: dict[str, dict] = {}
    parts = [part_path(output, i) for i in range(processes)]
    for path in ([output] if output.exists() else []) + [p for p in parts if p.exists()]:
        for r in _read_results(path):  # this run's parts replace what the output held
            if r["file"] not in by_file or "error" in by_file[r["file"]] or path != output:
                by_file[r["file"]] = r
    rank = {name: i for i, name in enumerate(order)}
    merged = sorted(by_file.values(), key=lambda r: rank.get(r["file"], len(rank)))
    write_json(merged, output)
    remove_parts(output)
    return merged


def part_files(output: Path) -> list[Path]:
    """The part files of `output` there are (`part_path` of any process), sorted."""
    return sorted(p for p in output.parent.glob(f"{output.name}.part*")
                  if p.name[len(output.name) + 5:].isdigit())


def fold_parts(output: Path) -> int:
    """Puts the results of `output`'s part files (a killed multi-process run's) into `output`
    (`finished_results`: successes first, failures of inputs without one) and deletes the parts;
    returns how many parts there were. For process 0 of a resumed multi-process run, before its
    processes write parts of their own."""
    if not part_files(output):
        return 0
    write_json(finished_results(output), output)
    return remove_parts(output)


def remove_parts(output: Path) -> int:
    """Deletes every part file of `output` (e.g. those a killed multi-process run left, whose
    results `finished_results` has read); returns how many."""
    parts = part_files(output)
    for p in parts:
        p.unlink(missing_ok=True)
    return len(parts)
