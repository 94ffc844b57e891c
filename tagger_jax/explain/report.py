"""Run outputs that people read: per-input JSON summaries, the failure record, and the web report.

The JSON summary of an input is written last (after its NPZ, PNG, audio and page, each staged
under a temporary name and renamed), so its presence means the input is finished; a rerun
compares its `signature` (model + settings) and `fingerprint` (the input's identity) to decide
whether to skip it.

The web report is self-contained and works from `file://` with no server and no network: each
input's page (`STEM.html`) inlines its script, style and data (spectrogram and 2-D maps as
palette PNGs in data URLs, 1-D maps as numbers) and refers only to its audio files beside it;
`index.html` lists every input (filter, sort, pages of 100) and the failures. The script and style
ship with the package (`tagger_jax/explain/assets/`). Hand-written canvas code (a few hundred
lines) rather than a plotting library: what the page needs (a shared time axis over a scrolled,
zoomed strip, one cursor on every row, colour bars) is a few drawing calls, and a charting
library would be many times the size to inline in every page of a 1,000-input report.

User text never becomes markup: HTML text is `html.escape`d, links are URL-quoted, data goes into
`<script type="application/json">` with `<`, `>`, `&` and the line separators written as
`\\uXXXX` escapes (so a name holding `</script>` cannot end the block), and the script puts
names into the page with `textContent` only.
"""
from __future__ import annotations

import base64
import html
import io
import json
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence
from urllib.parse import quote

import numpy as np

from tagger_jax import inference
from tagger_jax.outputs import atomic_write_text

SUMMARY_SUFFIX = ".json"
FAILURES_FILE = "failures.json"
INDEX_FILE = "index.html"
FORMAT = "tagger-jax-explanation"  # the "kind" of an input's summary JSON
_FILE_KEYS = ("npz", "png", "json", "html", "original", "kept", "removed")  # summary "files"


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Writes JSON by temporary file + rename (`outputs.atomic_write_text`), so readers never see
    half a file; a failed write (a full disk) leaves no temporary file and names `path`."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False))


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
        if isinstance(s, dict) and s.get("kind") == FORMAT:
            found.append(s)
    return sorted(found, key=lambda s: str(s.get("input", "")))


def listed_files(summary: Any) -> set[str]:
    """The file names (in the summary's folder) an input's summary lists under "files": its npz,
    png, html, the `.orig.ogg` playback copy and the `--listen` audio. Empty for anything that
    is not such a summary."""
    def names(files: Any):
        if isinstance(files, dict):
            for k, v in files.items():
                if k in _FILE_KEYS and isinstance(v, str):
                    yield v
                else:
                    yield from names(v)
        elif isinstance(files, list):
            for v in files:
                yield from names(v)

    if not (isinstance(summary, dict) and summary.get("kind") == FORMAT):
        return set()
    return {n for n in names(summary.get("files")) if "/" not in n and n not in ("", ".", "..")}


def output_files(folder: str | os.PathLike) -> dict[str, str]:
    """{file name: why it is an explanation output} for the files `tagger-jax explain` wrote in
    `folder`: those an input's summary JSON (kind `FORMAT`) lists under "files" (its npz, png,
    html, the `.orig.ogg` playback copy, the `--listen` audio) and the summary itself, plus
    failures.json and index.html beside them. Recognised by the summaries' content, not by file
    names alone; {} for a folder without summaries. Used to keep `tag DIR` off them."""
    out: dict[str, str] = {}
    for p in sorted(Path(folder).glob("*" + SUMMARY_SUFFIX)):
        s = read_json(p)
        if not (isinstance(s, dict) and s.get("kind") == FORMAT):
            continue
        why = f"explain output (listed in {p.name}, an explanation summary)"
        for name in [p.name, *sorted(listed_files(s))]:
            out.setdefault(name, why)
    if out:
        for name in (FAILURES_FILE, INDEX_FILE):
            out.setdefault(name, "explain output (beside this folder's explanation summaries)")
    return out


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


ASSETS = Path(__file__).with_name("assets")
PAGE_ROWS_PER_INDEX_PAGE = 100
LUT_SIZE = 64  # colours per colour map sent to the page (colour bars and 1-D rows)


def _asset(name: str) -> str:
    return (ASSETS / name).read_text(encoding="utf-8")


def script_json(obj: Any) -> str:
    """JSON safe inside <script type="application/json">: no `<`, `>`, `&` or line separators
    left as such, so no text (a name holding `</script>` or `<!--`) can end the block."""
    text = json.dumps(obj, separators=(",", ":"), allow_nan=False, ensure_ascii=False)
    for ch, code in (("&", "\\u0026"), ("<", "\\u003c"), (">", "\\u003e"),
                     ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(ch, code)
    return text


def _lut(cmap: str, n: int = LUT_SIZE) -> list[str]:
    from matplotlib import colormaps

    rgb = (colormaps[cmap](np.linspace(0, 1, n))[:, :3] * 255).round().astype(int)
    return ["#%02x%02x%02x" % tuple(c) for c in rgb]


def palette_png(values: np.ndarray, cmap: str, vmin: float, vmax: float) -> str:
    """A (rows, T) array as a data URL of an 8-bit palette PNG, row 0 at the bottom."""
    from matplotlib import colormaps
    from PIL import Image

    v = np.nan_to_num(np.asarray(values, np.float64), nan=vmin)  # gaps: the page hatches them
    idx = np.clip(np.rint((v - vmin) / max(vmax - vmin, 1e-12) * 255), 0, 255).astype(np.uint8)
    img = Image.fromarray(np.ascontiguousarray(idx[::-1]), mode="P")
    lut = (colormaps[cmap](np.linspace(0, 1, 256))[:, :3] * 255).round().astype(np.uint8)
    img.putpalette(lut.reshape(-1).tolist())
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _numbers(values: np.ndarray, digits: int = 4) -> list[float | None]:
    """Values rounded to about `digits` significant digits of the row's largest one; NaN (a time
    step no window covered) becomes None (JSON null), infinities 0."""
    raw = np.asarray(values, np.float64)
    v = np.nan_to_num(raw, nan=0.0, posinf=0.0, neginf=0.0)
    top = float(np.max(np.abs(v))) if v.size else 0.0
    decimals = max(0, digits - int(np.ceil(np.log10(top)))) if top > 0 else 0
    out = np.round(v, decimals).tolist()
    return [None if gap else x for x, gap in zip(out, np.isnan(raw).tolist())]


def _row_scale(values: np.ndarray, signed: bool, truth: bool = False) -> tuple[str, float, float]:
    from tagger_jax.explain.plotting import Row, _scale

    return _scale(Row("", values, signed=signed, truth=truth))


def page_data(summary: Mapping[str, Any], log_mel: np.ndarray, spec_step_s: float,
              rows: Sequence[Mapping[str, Any]], truth: Sequence[Mapping[str, Any]],
              frame_times: np.ndarray, map_step_s: float, sample_rate: int,
              audio_files: Mapping[str, Any]) -> dict[str, Any]:
    """Everything an input's page shows, as plain JSON-able data (see `write_input_page`).

    `gaps`: [start, end] seconds of the map time steps no window covered (the paper's chunks on
    a long track), drawn hatched over every map row; `coverage`: the summary's.
    """
    from tagger_jax.explain.plotting import HZ_TICKS, gap_spans, mel_band_of

    spec = np.asarray(log_mel, np.float64)
    lo, hi = float(spec.min()), float(spec.max())
    hz = [h for h in HZ_TICKS if 250 <= h <= sample_rate / 2]  # legible on a 150-px strip
    map_start = float(frame_times[0]) - 0.5 * map_step_s if len(frame_times) else 0.0
    audio_by_map = {(m["method"], m["tag"]): m for m in audio_files.get("maps", [])}
    cmaps = {"magma"}
    gaps = []
    if rows:
        gaps = [[map_start + a * map_step_s, map_start + b * map_step_s]
                for a, b in gap_spans(rows[0]["values"])]
    out_rows = []
    for i, r in enumerate(list(truth) + list(rows)):
        is_truth = "method" not in r
        values = np.asarray(r["values"], np.float64)
        cmap, vmin, vmax = _row_scale(values, bool(r.get("signed")), is_truth)
        cmaps.add(cmap)
        row = {"id": i, "method": "truth" if is_truth else r["method"], "tag": r["tag"],
               "label": "ground truth" if is_truth else r["label"],
               "unit": "sounds (0/1)" if is_truth else r["unit"], "cmap": cmap,
               "vmin": vmin, "vmax": vmax, "start_s": map_start, "step_s": map_step_s,
               "signed": bool(r.get("signed"))}
        if values.ndim == 2:
            row.update(kind="image", png=palette_png(values, cmap, vmin, vmax),
                       frames=int(values.shape[1]), bands=int(values.shape[0]))
        else:
            row.update(kind="line", values=_numbers(values), frames=int(values.shape[0]))
        if is_truth:
            row.update(start_s=-0.5 * spec_step_s, step_s=spec_step_s)
        m = audio_by_map.get((r.get("method"), r.get("tag")))
        if m is not None:
            row["audio"] = {"kept": m["kept"], "removed": m["removed"]}
        elif r.get("method") in audio_files.get("not_auralised", {}):
            row["silent"] = audio_files["not_auralised"][r["method"]]
        out_rows.append(row)
    return {
        "name": str(summary.get("input", "")), "key": str(summary.get("key", "")),
        "duration_s": float(summary.get("duration_s", 0.0)),
        "top_tags": summary.get("top_tags", []), "true_tags": true_tags(summary),
        "explained_tags": summary.get("explained_tags", []),
        "explained_text": explained_text(summary),
        "methods": summary.get("methods", []),
        "spec": {"png": palette_png(spec, "magma", lo, hi), "frames": int(spec.shape[1]),
                 "bands": int(spec.shape[0]), "start_s": -0.5 * spec_step_s,
                 "step_s": spec_step_s, "vmin": lo, "vmax": hi, "unit": "dB",
                 "hz_ticks": [[float(b), f"{h / 1000:g} kHz" if h >= 1000 else f"{h} Hz"]
                              for b, h in zip(mel_band_of(hz, spec.shape[0], sample_rate), hz)]},
        "rows": out_rows, "gaps": gaps, "coverage": summary.get("coverage"),
        # what the run did to the input and how its audio is degraded (docs/audio.md): the page
        # says it as the terminal and the summary do (a silent file's maps mean nothing)
        "warnings": [str(w) for w in summary.get("warnings", [])]
        + [f"{code}: {message}" for code, message in summary.get("audio_warnings", {}).items()],
        "audio": {"original": audio_files.get("original"), "note": audio_files.get("note"),
                  "keep": audio_files.get("keep"), "softness": audio_files.get("softness")},
        "luts": {c: _lut(c) for c in sorted(cmaps)},
    }


def _tag_chips(tags: Iterable[Mapping[str, Any]]) -> str:
    esc = html.escape
    return "".join(f"<span class='tag'>{esc(str(t['tag']))} {float(t['probability']):.2f}"
                   "</span>" for t in tags)


def true_tags(summary: Mapping[str, Any]) -> Optional[list[str]]:
    """An explained input's true tags: a dataset record's labels, else the tags a `--tags-from`
    CSV gave it (its tags are the file's true tags there; a trial found the index's column
    empty); None when not known."""
    if summary.get("true_tags") is not None:
        return [str(t) for t in summary["true_tags"]]
    if summary.get("tags_source") == "input":
        return [str(t) for t in summary.get("requested_tags", [])]
    return None


def explained_text(summary: Mapping[str, Any]) -> str:
    """"drums 0.47, bass 0.90, cello <0.01": the explained tags with their track probabilities
    (names only for a summary written before the probabilities were)."""
    tags = [str(t) for t in summary.get("explained_tags", [])]
    probs = summary.get("explained_probabilities")
    if not probs or len(probs) != len(tags):
        return ", ".join(tags)
    return ", ".join(f"{t} {'<0.01' if float(p) < 0.005 else format(float(p), '.2f')}"
                     for t, p in zip(tags, probs))  # not "cello 0.00" for 0.0036 (a trial)


def write_input_page(path: str | os.PathLike, data: Mapping[str, Any]) -> Path:
    """One input's interactive page: spectrogram (Hz axis, dB colour bar), a row per map and
    tag on the same time axis with its own colour bar, an audio player whose cursor runs over
    every row (click a row to seek), tag/method choice, original / kept / removed playback,
    zoom and scroll. Everything but the audio files is inside the page."""
    esc = html.escape
    name = str(data.get("name", ""))
    truth = data.get("true_tags")
    true_line = ("" if truth is None else "<div class='meta'>true tags: " +
                 (", ".join(esc(str(t)) for t in truth) or "(none)") + "</div>")
    body = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{esc(name)} · tagger-jax explanation</title>
<style>{_asset("report.css")}</style></head>
<body>
<nav><a href="index.html">&larr; all inputs</a></nav>
<h1 class="name">{esc(name)}</h1>
<div class="tags">top tags: {_tag_chips(data.get("top_tags", []))}</div>
{true_line}
<div class="meta">{float(data.get("duration_s", 0)):.1f} s · explained: {esc(data.get(
        "explained_text") or ", ".join(str(t) for t in data.get("explained_tags", [])))}</div>
{_coverage_line(data.get("coverage"))}
{"".join(f"<div class='meta warning'>warning: {esc(w)}</div>" for w in data.get("warnings", []))}
<div id="app"><noscript>This page needs JavaScript to draw the maps; the PNG figure and NPZ
beside it hold the same results.</noscript></div>
<script type="application/json" id="data">{script_json(data)}</script>
<script>{_asset("report.js")}</script>
</body></html>
"""
    return _write_text(path, body)


def _coverage_line(cover: Mapping[str, Any] | None) -> str:
    """The page's line on how much of the track the windows covered (none when they all did)."""
    if not cover or float(cover.get("fraction", 1.0)) >= 1.0:
        return ""
    return (f"<div class='meta' id='coverage'>windows cover {100 * float(cover['fraction']):.1f}%"
            f" of the track ({float(cover['covered_s']):.1f} s); hatched: not covered, no "
            "values</div>")


def _write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_text(path, text)


def write_index(out_dir: str | os.PathLike, title: str = "tagger-jax explanations") -> Path:
    """index.html: a table of every finished input (name linking to its page, duration, top
    tags, true tags, explained tags, files) that filters, sorts and pages in the browser, so it
    stays usable for thousands of inputs; then the failed inputs with their errors. The table is
    plain HTML (readable without the script); all text is escaped and links URL-quoted."""
    out_dir = Path(out_dir)
    esc = html.escape
    items = summaries(out_dir)
    failures = load_failures(out_dir)
    rows = []
    for s in items:
        files = s.get("files", {})
        name = str(s.get("input", ""))
        page = files.get("html") or files.get("png") or files.get("npz")
        link = (f"<a href='{esc(quote(str(page)), quote=True)}'>{esc(name)}</a>" if page
                else esc(name))
        links = " ".join(f"<a href='{esc(quote(str(files[k])), quote=True)}'>{k}</a>"
                         for k in ("png", "npz", "json") if files.get(k))
        top = s.get("top_tags", [])
        truth = true_tags(s)
        best = float(top[0]["probability"]) if top else 0.0
        record = s.get("record") or {}
        if record.get("path") or record.get("clip_id"):  # a dataset record: its source clip
            link += f"<br><small>{esc(str(record.get('path') or record.get('clip_id')))}</small>"
        rows.append(
            f"<tr><td class='name' data-sort='{esc(name, quote=True)}'>{link}</td>"
            f"<td data-sort='{float(s.get('duration_s', 0)):.3f}'>"
            f"{float(s.get('duration_s', 0)):.1f}</td>"
            f"<td data-sort='{best:.4f}'>{_tag_chips(top[:5])}</td>"
            f"<td>{'' if truth is None else esc(', '.join(map(str, truth)))}</td>"
            f"<td>{esc(explained_text(s))}</td>"
            f"<td class='files'>{links}</td></tr>")
    failed = "".join(f"<li>{esc(inference.named(f.get('input', ''), f.get('error', '')))}</li>"
                     for f in failures.values())
    body = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>
<style>{_asset("report.css")}</style></head>
<body>
<h1>{esc(title)}</h1>
<p>{len(items)} explained input(s), {len(failures)} failed.</p>
<div class="controls"><input id="filter" type="search" placeholder="filter by name or tag"
 aria-label="filter"> <span id="count"></span>
 <button id="prev" type="button">&larr; previous</button> <span id="page"></span>
 <button id="next" type="button">next &rarr;</button></div>
<table id="inputs" data-page-size="{PAGE_ROWS_PER_INDEX_PAGE}"><thead><tr>
<th data-type="text">input</th><th data-type="number">duration (s)</th>
<th data-type="number">top tags</th><th data-type="text">true tags</th>
<th data-type="text">explained</th><th>files</th></tr></thead>
<tbody>
{chr(10).join(rows)}
</tbody></table>
{"<h2>Failed inputs</h2><ul class='failed'>" + failed + "</ul>" if failures else ""}
<script>{_asset("index.js")}</script>
</body></html>
"""
    return _write_text(out_dir / INDEX_FILE, body)
