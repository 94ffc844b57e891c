"""Embeddings for downstream tasks: what the classifier reads, per window and per track.

For every window (placed by `tagger_jax.inference`, by default covering the whole track):
  * "embedding": the representation the classifier reads. Attention models: the pooled [CLS]
    vector tanh(W h_[CLS] + b) (attention_channels wide, 512 in the paper); the convolutional
    back-end (pons_pons): its hidden dense layer after BatchNorm and ReLU (500 wide);
  * "frontend": the front-end's output averaged over time (the Pons CNN's channels, or the
    waveform front-end's);
  * "probabilities": the tag probabilities of the window.
A track's vectors are the means over its windows (for probabilities, `inference.track_probabilities`).

`embed` returns them in memory; `embed_inputs` (`tagger-jax embed`) writes one NPZ per input plus
a merged `embeddings.npz`, resumes by skipping inputs whose NPZ has the same model signature,
window settings and input fingerprint, and records broken inputs in failures.json. Both run the
shared inference path: batched over inputs, split over the local devices, one process's share of
the inputs each under jax.distributed.
"""
from __future__ import annotations

import dataclasses
import io
import json
import re
import os
import sys
import zipfile
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np
from tqdm import tqdm

from tagger_jax import inference, outputs
from tagger_jax.progress import bar_interval

FORMAT = "tagger-jax-embedding/3"  # /2: tag_names in every NPZ; /3: source, records' labels
MERGED = "embeddings.npz"
FAILURES = "failures.json"
FIELDS = ("embedding", "frontend", "probabilities")


@dataclasses.dataclass
class Embeddings:
    """Track-level vectors of many inputs (row i is `names[i]`), and every window's."""

    names: list[str]
    embedding: np.ndarray  # (inputs, D)
    frontend: np.ndarray  # (inputs, C)
    probabilities: np.ndarray  # (inputs, tags)
    windows: list[dict[str, np.ndarray]]  # per input: window_starts_s and window_* arrays
    failed: dict[str, str]  # name -> error
    signature: str
    tag_names: list[str] = dataclasses.field(default_factory=list)  # `probabilities` columns
    # per input: {code: message} of its degradations (docs/audio.md), and what the run did to it
    audio_warnings: list[dict[str, str]] = dataclasses.field(default_factory=list)
    warnings: list[list[str]] = dataclasses.field(default_factory=list)


def run_signature(loaded, plan: inference.WindowPlan) -> str:
    """Changes with the model files or the window settings: outputs with another signature are
    not reused."""
    return inference.run_signature(loaded, plan, FORMAT)


def _track(p: inference.Prepared, out: dict, step_s: float, signature: str,
           model: str, tags: Sequence[str]) -> dict[str, Any]:
    record = {}  # a dataset record's labels, in the dataset's tag order (a linear probe's y)
    if p.labels is not None and p.item.meta.get("label_names"):
        record = {"labels": np.asarray(p.labels).astype(np.uint8).reshape(-1),
                  "label_names": np.array([str(t) for t in p.item.meta["label_names"]])}
    return {
        **record,
        **({inference.INPUT_PATH: np.array(p.item.meta[inference.INPUT_PATH])}
           if inference.INPUT_PATH in p.item.meta else {}),  # a file's absolute path
        "name": np.array(p.item.name), "fingerprint": np.array(p.item.fingerprint),
        "source": np.array(p.source),  # a dataset record's source clip; "" for files
        "signature": np.array(signature), "model_signature": np.array(model),
        "format": np.array(FORMAT),
        "tag_names": np.array([str(t) for t in tags]),  # the model's, in probability order
        "window_starts_s": (p.starts * step_s).astype(np.float64),
        **{f"window_{k}": out[k].astype(np.float32) for k in FIELDS},
        "embedding": out["embedding"].mean(axis=0, dtype=np.float64).astype(np.float32),
        "frontend": out["frontend"].mean(axis=0, dtype=np.float64).astype(np.float32),
        "probabilities": inference.track_probabilities(out["probabilities"]),
        # {code: message} of a degraded input (docs/audio.md) as JSON text; "{}" when clean
        "audio_warnings": np.array(json.dumps(dict(p.warnings), sort_keys=True)),
        # [message] of what the run did to the input (a short clip repeated to fill a window),
        # as `tag`'s result's `warnings`, as JSON text; "[]" when none
        "warnings": np.array(json.dumps(list(p.notes))),
    }


def embed(engine: inference.Engine, items: Sequence[inference.Input],
          plan: inference.WindowPlan = inference.WindowPlan(), progress: bool = False,
          on_track: Optional[Callable[[inference.Input, dict], None]] = None) -> Embeddings:
    """Embeddings of `items` (e.g. `engine.file_inputs(paths)`) in memory, in input order.

    Broken inputs are left out of the arrays and listed in `failed`; degraded ones are kept,
    their degradations in `audio_warnings` (nothing is printed here: the command prints them).
    TypeError for items that are not `inference.Input`s. Example:
        engine = inference.Engine(checkpoint.load_model("model_dir"))
        e = embed(engine, engine.file_inputs(["music/"]))
        e.embedding  # (files, 512) for the paper's model
    """
    other = next((i for i in items if not isinstance(i, inference.Input)), None)
    if other is not None:
        raise TypeError(f"embed takes inference.Input items, got a {type(other).__name__}; "
                        "for files pass engine.file_inputs(paths)")
    plan.checked(engine.geometry)  # a hop longer than a window fails here (and a note)
    signature = run_signature(engine.loaded, plan)
    model = inference.model_signature(engine.loaded)
    tracks: dict[str, dict] = {}
    failed: dict[str, str] = {}
    bar = tqdm(total=len(items), unit="input", desc=inference.share_label("embed"),
               disable=not progress, file=sys.stderr, **bar_interval())

    def done(p: inference.Prepared, out: dict) -> None:
        track = _track(p, out, engine.geometry.step_s, signature, model, engine.tags)
        tracks[p.item.key] = track
        if on_track is not None:
            on_track(p.item, track)
        bar.update(1)

    def error(item: inference.Input, e: BaseException) -> None:
        text = str(e) or type(e).__name__
        failed[item.name] = text if item.name in text else f"{item.name}: {text}"
        bar.update(1)

    try:
        names = {it.key: it.name for it in items}
        engine.run(items, plan, engine.embed_fn(), done, error,
                   engine.rows_postfix(bar, names.__getitem__))
    finally:
        bar.close()
    ok = [it for it in items if it.key in tracks]
    return _stack([tracks[it.key] for it in ok], failed, signature)


def _stack(tracks: list[dict], failed: dict[str, str], signature: str) -> Embeddings:
    def rows(name: str) -> np.ndarray:  # (0, 0) when every input failed
        return np.stack([t[name] for t in tracks]) if tracks else np.zeros((0, 0), np.float32)

    windows = [{k: v for k, v in t.items() if k.startswith("window_")} for t in tracks]
    return Embeddings([str(t["name"]) for t in tracks], rows("embedding"), rows("frontend"),
                      rows("probabilities"), windows, failed, signature,
                      [str(n) for n in tracks[0]["tag_names"]] if tracks else [],
                      [json.loads(str(t["audio_warnings"])) for t in tracks],
                      [json.loads(str(t["warnings"])) for t in tracks])


def _write_npz(path: Path, arrays: dict) -> None:
    """`arrays` as an NPZ at `path` (`outputs.atomic_write_bytes`: no temporary file outlives a
    failed write, which is an `OutputError` naming `path`)."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    outputs.atomic_write_bytes(path, buf.getvalue())


def _read_npz(path: Path) -> Optional[dict]:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):  # damaged: computed again
        return None


def _stored_name(path: Path) -> Optional[str]:
    """The input an NPZ records (`inference.recorded_input`; None: no file, or it does not
    read)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            if "name" not in z.files:
                return None
            return inference.recorded_input(
                str(z[inference.INPUT_PATH]) if inference.INPUT_PATH in z.files else None,
                str(z["name"]))
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        return None


def _write_json(path: Path, obj: Any) -> None:
    outputs.atomic_write_text(path, json.dumps(obj, indent=1))


@dataclasses.dataclass
class EmbedReport:
    done: list[str]
    skipped: list[str]
    failed: dict[str, str]
    merged: Optional[Path]
    replaced: list[str] = dataclasses.field(default_factory=list)  # outputs computed again

    def __str__(self) -> str:
        lines = [inference.run_summary("embedded", len(self.done), len(self.skipped),
                                       len(self.failed), len(self.replaced))]
        if self.merged is not None:
            lines.append(f"track-level embeddings of this run's finished inputs: {self.merged}")
        return "\n".join(lines)

    def failure_lines(self) -> list[str]:
        """One `failed:` line per failed input (`inference.failure_lines`; the command prints
        them on stderr after the counts)."""
        return inference.failure_lines(self.failed.items())


def embed_inputs(engine: inference.Engine, items: Sequence[inference.Input],
                 out_dir: str | os.PathLike, plan: inference.WindowPlan = inference.WindowPlan(),
                 progress: bool = True, retry_failed: bool = False) -> EmbedReport:
    """Writes OUT/<key>.npz per input and OUT/embeddings.npz (all finished inputs, in input
    order); see the module doc for the arrays. Resumable; with several processes each embeds its
    share and process 0 writes the merged files (its report covers the run)."""
    import jax

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plan.hop_steps(engine.geometry)
    signature = run_signature(engine.loaded, plan)
    if len({it.key for it in items}) != len(items):
        raise ValueError("input keys must be unique")
    process, processes = jax.process_index(), jax.process_count()
    from tagger_jax.explain import report as explain_report

    inference.refuse_other_outputs(out, "embed", "explain", explain_report.output_files(out))
    items, renamed = inference.avoid_reserved(items, lambda key: f"{key}.npz" == MERGED)
    for line in inference.reserved_lines(renamed) if process == 0 else ():
        print(line, file=sys.stderr)
    items, adopted = inference.adopt_keys(items, {
        p.stem: _stored_name(p) for p in sorted(out.glob("*.npz")) if p.name != MERGED})
    if adopted and process == 0:
        print(inference.adopted_line(adopted, out, ".npz"), file=sys.stderr)
    items, moved = inference.claim_keys(items, lambda key: _stored_name(out / f"{key}.npz"))
    for line in inference.moved_lines(moved, out, ".npz") if process == 0 else ():
        print(line, file=sys.stderr)
    share = inference.process_share(items, process, processes)
    old_failures = inference.forget_other_keys(_read_failures(out / FAILURES), items)
    skipped, failed, todo, replaced = [], {}, [], []
    reused_warned = []  # (warnings, audio_warnings) of the reused NPZs
    for item in share:
        path = out / f"{item.key}.npz"
        npz = _read_npz(path)
        if inference.reusable(npz, signature, item.fingerprint):
            skipped.append(item.name)
            reused_warned.append(inference.stored_warnings(npz))
            continue
        if path.exists():  # made with other settings, or of an earlier version of the input
            replaced.append(item.name)
        old = old_failures.get(item.key)
        if (old and old.get("fingerprint") == item.fingerprint
                and old.get("signature") == signature and not retry_failed):
            failed[item.name] = f"{old['error']} (failed in an earlier run; unchanged, not retried)"
            continue
        todo.append(item)
    if replaced:
        print(inference.replaced_line(len(replaced), out, "embedded"), file=sys.stderr)
    done: list[str] = []
    new_failures: dict[str, dict] = {}

    warned: list[tuple[list[str], dict[str, str]]] = []

    def on_track(item: inference.Input, track: dict) -> None:
        notes, codes = (json.loads(str(track["warnings"])),  # as `tag` says them
                        json.loads(str(track["audio_warnings"])))
        for message in [*notes, *codes.values()]:
            tqdm.write(f"warning: {message}", file=sys.stderr)
        warned.append((notes, codes))
        _write_npz(out / f"{item.key}.npz", track)
        done.append(item.name)

    try:
        result = embed(engine, todo, plan, progress=progress and process == 0, on_track=on_track)
    except KeyboardInterrupt as e:  # Ctrl-C, SIGTERM (errors.Terminated): the finished ones merged
        if processes == 1:
            _merge(out, items, signature)
        from tagger_jax import errors

        errors.interrupted_note(e, "embedded", len(done), len(todo), f"are in {out}",
                                "running it again embeds", reused=len(skipped))
        raise
    except Exception as e:  # a full disk: said with what is kept (a trial got a bare errno line)
        from tagger_jax import errors

        if errors.storage_full(e):
            errors.interrupted_note(e, "embedded", len(done), len(todo), f"are in {out}",
                                    "running it again embeds", reused=len(skipped))
        raise
    for counted in (inference.warning_counts(warned, len(todo)),
                    inference.warning_counts(reused_warned, len(skipped), reused=True)):
        if counted:
            print(counted, file=sys.stderr)
    by_name = {it.name: it for it in todo}
    for name, msg in result.failed.items():
        failed[name] = msg
        item = by_name[name]
        new_failures[item.key] = {"input": name, "error": msg, "fingerprint": item.fingerprint,
                                  "signature": signature}
    mine = {it.key for it in share}
    kept = {k: v for k, v in old_failures.items()  # unchanged failures, not retried
            if k in mine and v.get("input") in failed}
    part = {"keys": sorted(mine), "done": done, "skipped": skipped, "failed": failed,
            "failures": {**kept, **new_failures}, "replaced": replaced}
    if processes > 1:
        _write_json(out / f"run.part{process}.json", part)
        inference.barrier("embed-parts-written")
        if process != 0:
            return EmbedReport(done, skipped, failed, None, replaced)
        parts = [json.loads((out / f"run.part{p}.json").read_text()) for p in range(processes)]
    else:
        parts = [part]
    replaced = [name for p in parts for name in p.get("replaced", [])]
    done, skipped, failed, merged_failures = inference.merge_shares(parts, old_failures)
    if merged_failures:
        _write_json(out / FAILURES, merged_failures)
    elif (out / FAILURES).exists():
        (out / FAILURES).unlink()
    try:
        merged = _merge(out, items, signature)
    except Exception as e:  # a full disk at the merged file: the inputs' own files are kept
        from tagger_jax import errors

        if errors.storage_full(e):
            e.add_note(f"the {len(done) + len(skipped)} input(s) embedded are in {out}, one NPZ "
                       "each; running it again reuses them and writes the merged file")
        raise
    for p in range(processes if processes > 1 else 0):
        (out / f"run.part{p}.json").unlink(missing_ok=True)
    if processes == 1:  # a killed multi-process run's parts: this run retried their inputs
        for stale in out.glob("run.part*.json"):
            if re.fullmatch(r"run\.part\d+\.json", stale.name):
                stale.unlink(missing_ok=True)
    return EmbedReport(done, skipped, failed, merged, replaced)


def is_output(path: str | os.PathLike) -> bool:
    """Whether `path` is an NPZ `tagger-jax embed` wrote (its `format` field)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return "format" in z.files and str(z["format"]) == FORMAT
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        return False


def output_files(folder: str | os.PathLike) -> dict[str, str]:
    """{file name: why it is an embed output} for the files `tagger-jax embed` wrote in `folder`:
    the NPZs of this format (their `format` field) and, beside them, embeddings.npz and
    failures.json; {} for a folder without them. A directory search lists them in one line per
    folder (a trial's scan of a tree holding an embed folder gave 129 `not audio` lines)."""
    out = {p.name: "embed output (an NPZ of tagger-jax embed)"
           for p in sorted(Path(folder).glob("*.npz")) if is_output(p)}
    if out:
        for name in (MERGED, FAILURES):
            if (Path(folder) / name).exists():
                out.setdefault(name, "embed output (beside this folder's embeddings)")
    return out


def _read_failures(path: Path) -> dict[str, dict]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _merge(out: Path, items: Sequence[inference.Input], signature: str) -> Optional[Path]:
    """OUT/embeddings.npz: track-level arrays of every input of this run with a current NPZ (this
    run's signature and the input's present version, `inference.reusable`: an input that
    changed and then failed, or that an interrupted run did not reach, is left out), in input
    order, with their names, keys and the run signature; removed (None) when there is none, so
    that an earlier run's merged file never stands for this one."""
    rows = []
    for item in items:
        z = _read_npz(out / f"{item.key}.npz")
        if inference.reusable(z, signature, item.fingerprint):
            rows.append((item, z))
    if not rows:
        (out / MERGED).unlink(missing_ok=True)
        return None
    path = out / MERGED
    _write_npz(path, {
        "names": np.array([it.name for it, _ in rows]),
        "keys": np.array([it.key for it, _ in rows]),
        "sources": np.array([str(z["source"]) for _, z in rows]),
        **_merged_labels([z for _, z in rows]),
        "signature": np.array(signature), "format": np.array(FORMAT),
        "model_signature": rows[0][1]["model_signature"],
        "tag_names": rows[0][1]["tag_names"],  # one model (same signature): the same tags
        **{k: np.stack([z[k] for _, z in rows]) for k in FIELDS},
        "num_windows": np.array([len(z["window_starts_s"]) for _, z in rows]),
        # per input, JSON text as in its NPZ (NPZs of before these fields: "{}" and "[]")
        "audio_warnings": np.array([str(z.get("audio_warnings", "{}")) for _, z in rows]),
        "warnings": np.array([str(z.get("warnings", "[]")) for _, z in rows]),
    })
    return path


def _merged_labels(rows: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """"labels" (inputs, tags) and "label_names" when every row is a record of one dataset
    (the same label names); {} otherwise (files, or records of datasets with other tags)."""
    names = [tuple(z["label_names"]) if "label_names" in z else None for z in rows]
    if names[0] is None or any(n != names[0] for n in names):
        return {}
    return {"labels": np.stack([z["labels"] for z in rows]), "label_names": rows[0]["label_names"]}


def load_embeddings(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The arrays of an `embeddings.npz` (or of one input's NPZ) as a dict."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path}: a directory; the merged file of an embed run is "
                         f"{path / MERGED}")
    data = _read_npz(path)
    if data is None:
        raise ValueError(f"{path}: not a readable embeddings NPZ")
    return data

