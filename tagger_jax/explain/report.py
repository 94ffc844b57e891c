"""Run outputs that people read: per-input JSON summaries, the failure record and index.html.

The JSON summary of an input is written last (after its NPZ and PNG, each by atomic rename), so
its presence means the input is finished; a rerun compares its `signature` (model + settings)
and `fingerprint` (the input's identity) to decide whether to skip it.
"""
from __future__ import annotations

import html
import json
import os
from pathlib import Path
from typing import Any, Iterable, Mapping
from urllib.parse import quote

SUMMARY_SUFFIX = ".json"
FAILURES_FILE = "failures.json"
INDEX_FILE = "index.html"


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Writes JSON by temporary file + rename, so readers never see half a file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=False))
    tmp.replace(path)
    return path


def read_json(path: str | os.PathLike) -> Any | None:
    """The parsed file, or None if it is missing or unreadable (treated as not finished)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def summaries(out_dir: str | os.PathLike) -> list[dict]:
    """Every finished input's summary in `out_dir`, sorted by input name."""
    found = []
    for p in Path(out_dir).glob("*" + SUMMARY_SUFFIX):
        if p.name == FAILURES_FILE:
            continue
        s = read_json(p)
        if isinstance(s, dict) and s.get("kind") == "tagger-jax-explanation":
            found.append(s)
    return sorted(found, key=lambda s: str(s.get("input", "")))


def load_failures(out_dir: str | os.PathLike) -> dict[str, dict]:
    data = read_json(Path(out_dir) / FAILURES_FILE)
    return data if isinstance(data, dict) else {}


def save_failures(out_dir: str | os.PathLike, failures: Mapping[str, Mapping]) -> None:
    path = Path(out_dir) / FAILURES_FILE
    if failures:
        if read_json(path) != dict(failures):  # unchanged: leave the file (and its mtime) alone
            write_json(path, dict(sorted(failures.items())))
    elif path.exists():
        path.unlink()


_STYLE = """
body { font-family: sans-serif; margin: 1.5em; color: #222; }
.card { border: 1px solid #ccc; border-radius: 6px; padding: 0.6em 1em; margin: 1em 0; }
.card img { max-width: 100%; height: auto; }
.name { font-family: monospace; font-size: 1.05em; font-weight: bold; }
.tags { margin: 0.3em 0; } .tag { display: inline-block; background: #eef; padding: 0 0.4em;
  margin-right: 0.3em; border-radius: 3px; } .meta { color: #666; font-size: 0.85em; }
.failed li { font-family: monospace; }
"""


def write_index(out_dir: str | os.PathLike, title: str = "tagger-jax explanations") -> Path:
    """index.html showing every finished input's figure, file name and top tags, then failures.

    Every piece of text from inputs (names, tags, error messages) is HTML-escaped and every link
    is URL-quoted, so odd file names cannot break or inject into the page.
    """
    out_dir = Path(out_dir)
    esc = html.escape
    parts = [f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{esc(title)}</title>"
             f"<style>{_STYLE}</style></head><body>", f"<h1>{esc(title)}</h1>"]
    items = summaries(out_dir)
    failures = load_failures(out_dir)
    parts.append(f"<p>{len(items)} explained input(s), {len(failures)} failed.</p>")
    for s in items:
        files = s.get("files", {})
        tags = "".join(f"<span class='tag'>{esc(str(t['tag']))} {float(t['probability']):.2f}"
                       "</span>" for t in s.get("top_tags", []))
        parts.append("<div class='card'>")
        parts.append(f"<div class='name'>{esc(str(s.get('input', '')))}</div>")
        parts.append(f"<div class='tags'>top tags: {tags}</div>")
        meta = (f"{float(s.get('duration_s', 0)):.1f} s, {s.get('num_chunks', '?')} chunk(s); "
                f"explained: {', '.join(esc(str(t)) for t in s.get('explained_tags', []))}; "
                f"methods: {', '.join(esc(str(m)) for m in s.get('methods', []))}")
        parts.append(f"<div class='meta'>{meta}</div>")
        links = " ".join(f"<a href='{quote(str(f))}'>{esc(str(f))}</a>"
                         for k, f in files.items() if f)
        parts.append(f"<div class='meta'>files: {links}</div>")
        if files.get("png"):
            parts.append(f"<img src='{quote(str(files['png']))}' "
                         f"alt='{esc(str(s.get('input', '')), quote=True)}'>")
        parts.append("</div>")
    if failures:
        parts.append("<h2>Failed inputs</h2><ul class='failed'>")
        for f in failures.values():
            parts.append(f"<li>{esc(str(f.get('input', '')))}: {esc(str(f.get('error', '')))}"
                         "</li>")
        parts.append("</ul>")
    parts.append("</body></html>\n")
    path = out_dir / INDEX_FILE
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n".join(parts), encoding="utf-8")
    tmp.replace(path)
    return path


def format_report(done: Iterable[str], skipped: Iterable[str],
                  failed: Mapping[str, str]) -> str:
    """The end-of-run text: counts and every failure with its reason."""
    done, skipped = list(done), list(skipped)
    lines = [f"explained {len(done)} input(s), skipped {len(skipped)} already finished, "
             f"{len(failed)} failed"]
    lines += [f"  FAILED {err}" if str(err).startswith(str(name)) else f"  FAILED {name}: {err}"
              for name, err in failed.items()]
    return "\n".join(lines)
