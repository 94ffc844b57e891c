"""Worker-side functions: one clip in, one example (or a reason to skip it) out.

They run in spawned worker processes, so they are top-level and import only NumPy, librosa and
soundfile (through `tagger_jax.audio`), never JAX.
"""
from __future__ import annotations

import json
import os
import tempfile
from typing import Any

import numpy as np

from tagger_jax import audio as audio_lib
from tagger_jax.datasets._common import FEATURES


def _example(wave: np.ndarray, item: dict) -> dict[str, Any]:
    mel = audio_lib.log_mel(wave, **FEATURES.mel_kwargs)
    example = {
        "mel": mel.astype(np.float16),
        "tags": np.asarray(item["tags"], np.uint8),
        "clip_id": item["clip_id"],
        "path": item["path"],
        "duration": np.float32(len(wave) / FEATURES.sample_rate),
    }
    if item.get("waveform"):
        example["audio"] = np.asarray(wave, np.float32)
    return example


def short_clip_note(name: str, frames: int, hop_length: int, sample_rate: int
                    ) -> dict[str, str]:
    """{chunking.SHORT_CLIP_CODE: message} for a clip of fewer log-mel `frames` than
    `chunking.SHORTEST_TRAINING_CHUNK`, else {}: a training repeats such a clip to fill its
    chunk, so the tags are learnt from a loop of it (a new user's 0.3-s clips were trained on
    without a word)."""
    from tagger_jax import chunking

    shortest = chunking.SHORTEST_TRAINING_CHUNK
    if frames >= shortest:
        return {}
    seconds = lambda n: n * hop_length / sample_rate  # noqa: E731
    return {chunking.SHORT_CLIP_CODE: (
        f"{name}: {frames} frames ({seconds(frames):.2f} s), shorter than a training chunk "
        f"({shortest} frames, {seconds(shortest):.2f} s, in the CPU configs; "
        f"{chunking.SPECTROGRAM_CHUNK}, {seconds(chunking.SPECTROGRAM_CHUNK):.2f} s, in the "
        "paper's): training repeats it to fill one, so its tags are learnt from a loop")}


def _zip_name(parts: tuple[str, ...], member: str) -> str:
    """How messages name a clip read from a zip archive's member."""
    return f"{member} (in {os.path.basename(parts[0])}...)"


def _load_from_zip(parts: tuple[str, ...], member: str) -> tuple[np.ndarray, dict[str, str]]:
    from tagger_jax.datasets._archive import open_zip

    data = open_zip(tuple(parts)).read(member)
    suffix = os.path.splitext(member)[1] or ".mp3"
    fd, tmp = tempfile.mkstemp(suffix=suffix, prefix="tagger_jax_")
    where = _zip_name(parts, member)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        try:
            wave, notes = audio_lib.load_audio_checked(tmp, FEATURES.sample_rate)
        except audio_lib.InputError as e:  # name the archive member, not the temporary copy
            raise audio_lib.InputError(str(e).replace(tmp, where)) from None
        return wave, {code: text.replace(tmp, where) for code, text in notes.items()}
    finally:
        os.unlink(tmp)


def _signature(item: dict) -> str:
    """Identifies the source bytes cheaply, so a resumed build ignores stale cached features."""
    if "zip" in item:
        from tagger_jax.datasets._archive import open_zip

        info = open_zip(tuple(item["zip"])).getinfo(item["member"])
        return f"zip:{item['member']}:{info.CRC}:{info.file_size}"
    if not os.path.isfile(item["file"]):
        return ""  # nothing to cache; load_audio reports it
    st = os.stat(item["file"])
    return f"file:{st.st_size}:{st.st_mtime_ns}"


def _cached(item: dict, signature: str) -> dict | None:
    try:
        with np.load(item["cache"], allow_pickle=False) as z:
            if str(z["signature"]) != signature or ("audio" in z) != bool(item.get("waveform")):
                return None
            example = {"mel": z["mel"], "tags": np.asarray(item["tags"], np.uint8),
                       "clip_id": item["clip_id"], "path": item["path"],
                       "duration": np.float32(z["duration"])}
            if "audio" in z:
                example["audio"] = z["audio"]
            return example, json.loads(str(z["warnings"]))
    except (OSError, KeyError, ValueError):
        return None


def _store(item: dict, signature: str, example: dict, notes: dict[str, str]) -> None:
    arrays = {"signature": np.asarray(signature), "mel": example["mel"],
              "duration": np.asarray(example["duration"]),
              "warnings": np.asarray(json.dumps(notes, sort_keys=True))}
    if "audio" in example:
        arrays["audio"] = example["audio"]
    tmp = item["cache"] + ".tmp.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, item["cache"])  # atomic: an interrupted write leaves no half entry


def audio_example(item: dict) -> tuple[dict | None, str | None, dict[str, str]]:
    """(example, None, warnings) or (None, reason, {}). `warnings`: the clip's silent audio
    degradations, {code: message naming the file} (`audio.load_audio_checked`, docs/audio.md).
    `item`: key, clip_id, path (shown in reports), tags, waveform, either `file` (a path) or
    `zip` (part paths) + `member`, and optionally `cache` (an .npz path: features and warnings
    are reused from there when the source is unchanged, and saved; `short_clip` is not cached
    but derived from the features each time)."""
    if "error" in item:  # found missing while listing the sources
        return None, item["error"], {}
    try:
        signature = _signature(item) if item.get("cache") else ""
        cached = (_cached(item, signature) if signature and os.path.exists(item["cache"])
                  else None)
        if cached is not None:
            example, notes = cached
        else:
            if "zip" in item:
                wave, notes = _load_from_zip(item["zip"], item["member"])
            else:
                wave, notes = audio_lib.load_audio_checked(item["file"], FEATURES.sample_rate)
            example = _example(wave, item)
            if signature:
                _store(item, signature, example, notes)
        name = (_zip_name(item["zip"], item["member"]) if "zip" in item
                else audio_lib.display_path(item["file"]))
        # From the features, not the cache: a cache written before this warning existed has it.
        notes = {**notes, **short_clip_note(name, example["mel"].shape[-1],
                                            FEATURES.hop_length, FEATURES.sample_rate)}
        return example, None, notes
    except audio_lib.InputError as e:
        return None, str(e), {}
    except Exception as e:  # anything else a broken file triggers must not stop the build
        where = item.get("file") or item.get("member") or item["path"]
        return None, f"{where}: {type(e).__name__}: {e}", {}


def synth_example(job: dict) -> dict[str, Any]:
    """A `synthetic_tags` example for seed `job["seed"]`."""
    from tagger_jax import synth

    wave, tags, mask = synth.generate_clip(
        job["seed"], job["duration_s"], FEATURES.sample_rate, segments=job["segments"],
        hop_length=FEATURES.hop_length)
    example = _example(wave, dict(job, tags=tags))
    if job["segments"]:
        if mask.shape[1] != example["mel"].shape[1]:
            raise AssertionError(f"tag mask has {mask.shape[1]} frames, mel has "
                                 f"{example['mel'].shape[1]}")
        example["tag_mask"] = mask
    return example


def soundfont_example(job: dict) -> dict[str, Any]:
    """A `soundfont_tags` example: score `job["seed"]` rendered with bank `job["bank"]`."""
    from tagger_jax import soundfont

    clip = soundfont.render_clip(job["seed"], job["bank"], job["duration_s"],
                                 hop_length=FEATURES.hop_length,
                                 siblings=job.get("siblings", 0.0))
    example = _example(clip["audio"], dict(job, tags=clip["tags"]))
    if clip["tag_mask"].shape[1] != example["mel"].shape[1]:
        raise AssertionError(f"tag mask has {clip['tag_mask'].shape[1]} frames, mel has "
                             f"{example['mel'].shape[1]}")
    score = clip["score"]
    example.update(tag_mask=clip["tag_mask"], stem_db=clip["stem_db"],
                   tempo_bpm=np.float32(score.tempo_bpm), key=score.key,
                   bank=job["bank_name"])
    return example
