"""What a "never heard" bank shares with the training bank: samples and sound, per instrument.

    python benchmarks/bank_overlap.py [--training merlin[,BANK...]] [--unseen timgm6mb[,BANK...]]
        [--metrics RUN/test/metrics.json RUN/test/test_timgm6mb/metrics.json ...]

Free General MIDI banks are assembled from the same freeware sample sets, so a bank the model
never trained on may play some instruments with the very samples of the training bank. Before an
unseen bank's ROC-AUC is read as cross-bank generalisation, this says for which instruments it
is one. For every instrument family of `tagger_jax.gm_score.INSTRUMENTS` and every GM program it
draws from, comparing each training bank (`--training`) with each other bank (`--unseen`):

* samples: how many of the training bank's samples under that program's preset (bank 0; the
  drum kit is bank 128, preset 0) appear bit for bit in the other bank's preset (SHA-1 of the
  sample data, read with `sf2utils`);
* sound: the absolute correlation of the two banks' renders of one note (`soundfont.render_part`,
  velocity 90, 1 s, mid-register; a kick, snare and hi-hat for the drums). 1.000 means the
  instrument sounds identical; a preset can share all its samples and still sound different
  (other key ranges, tuning, filters or envelopes).

A family is "same sound" when every program's note renders alike (|correlation| >= 0.99),
"same samples" when some samples are shared (or one program sounds alike) and "distinct"
otherwise; with several training banks, what any of them shares counts. Only "distinct"
instruments measure cross-bank generalisation. With `--metrics` (per-tag reports, `metrics.json`
of `tagger-jax evaluate` or of a training run's test: first the test on the training banks, then
one per `--unseen` bank), the mean ROC-AUC of the instrument tags of each class is printed for
both ("mixed": a tag such as strings that families of different classes make true; tempo and
level tags are left out).

Needs `sf2utils` (in the test extra: `pip install -e ".[test]"`). Reports are checked against
their split names (`test`, then `test_<bank>`), when they record one.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import logging
import os
import sys
from pathlib import Path
from typing import Optional, Union

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tagger_jax import gm_score, soundfont  # noqa: E402

Bank = Union[str, os.PathLike]  # a name in soundfont.BANKS or a .sf2 path
Samples = dict[tuple[int, int], set[str]]  # (bank, preset) -> SHA-1 digests of its samples
DRUM_KIT = (128, 0)  # (bank, preset) of the GM standard kit
PROBE_VELOCITY = 90
PROBE_S = (0.1, 1.1)  # note-on, note-off of the probe note (seconds)
SAME_SOUND = 0.99  # |correlation| of the probe renders from which an instrument sounds the same


def preset_samples(bank: Bank) -> Samples:
    """(bank, preset) -> SHA-1 digests of the sample data its instruments play."""
    from sf2utils.sf2parse import Sf2File

    path = soundfont.resolve_bank(bank)
    logger = logging.getLogger()  # sf2utils warns about loop points on the root logger
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with open(path, "rb") as f:
            sf2 = Sf2File(f)
            out: dict[tuple[int, int], set[str]] = {}
            for preset in sf2.presets:
                if getattr(preset, "bank", None) is None:  # the terminal EOP record
                    continue
                digests = out.setdefault((preset.bank, preset.preset), set())
                for bag in preset.bags:
                    for ibag in (bag.instrument.bags if bag.instrument is not None else ()):
                        if ibag.sample is not None:
                            digests.add(hashlib.sha1(ibag.sample.raw_sample_data).hexdigest())
    finally:
        logger.setLevel(level)
    return out


def probe_part(family: str, program: int) -> gm_score.Part:
    """One note in the middle of the family's register (drums: kick, snare and hi-hat)."""
    inst = gm_score.INSTRUMENTS[family]
    start, end = PROBE_S
    if "drums" in inst.roles:
        notes = tuple(gm_score.Note(k, start + 0.3 * i, start + 0.3 * i + gm_score.DRUM_HIT_S,
                                    PROBE_VELOCITY)
                      for i, k in enumerate((gm_score.KICK, gm_score.SNARE, gm_score.HAT)))
        return gm_score.Part("drums", family, 0, notes)
    pitch = (inst.register[0] + inst.register[1]) // 2
    return gm_score.Part(inst.roles[0], family, program,
                         (gm_score.Note(pitch, start, end, PROBE_VELOCITY),))


def sound_correlation(family: str, program: int, bank_a: Bank, bank_b: Bank) -> float:
    """|Pearson correlation| of the two banks' renders of `probe_part` (0 if one is silent)."""
    part = probe_part(family, program)
    duration = PROBE_S[1] + soundfont.RELEASE_S + 0.2
    a = soundfont.render_part(part, bank_a, duration).astype(np.float64)
    b = soundfont.render_part(part, bank_b, duration).astype(np.float64)
    if not a.any() or not b.any():
        return 0.0
    return float(abs(np.corrcoef(a, b)[0, 1]))


def overlap(bank_a: Bank, bank_b: Bank, samples_a: Optional[Samples] = None,
            samples_b: Optional[Samples] = None) -> list[dict]:
    """Per family and program: samples of `bank_a`'s preset found in `bank_b`'s, and the sound
    correlation. Rows: {"family", "program", "shared", "total", "sound"}."""
    samples_a = samples_a if samples_a is not None else preset_samples(bank_a)
    samples_b = samples_b if samples_b is not None else preset_samples(bank_b)
    rows = []
    for family, inst in gm_score.INSTRUMENTS.items():
        for program in inst.programs or (None,):
            key = DRUM_KIT if program is None else (0, program)
            mine, theirs = samples_a.get(key, set()), samples_b.get(key, set())
            rows.append({"family": family, "program": program, "shared": len(mine & theirs),
                         "total": len(mine),
                         "sound": sound_correlation(family, program or 0, bank_a, bank_b)})
    return rows


def family_classes(rows: list[dict]) -> dict[str, str]:
    """family -> "same sound" (every program's probe note renders alike, |correlation| >=
    `SAME_SOUND`), "same samples" (some program shares samples bit for bit or sounds alike, not
    every program sounds alike) or "distinct" (neither). Samples can also be the same audio
    stored differently (other trimming), which only the sound shows."""
    out = {}
    for family in dict.fromkeys(r["family"] for r in rows):
        mine = [r for r in rows if r["family"] == family]
        if all(r["sound"] >= SAME_SOUND for r in mine):
            out[family] = "same sound"
        elif any(r["shared"] > 0 or r["sound"] >= SAME_SOUND for r in mine):
            out[family] = "same samples"
        else:
            out[family] = "distinct"
    return out


def tag_classes(classes: dict[str, str]) -> dict[str, str]:
    """tag -> the class of the families that make it true ("mixed" if they differ); the global
    tags (tempo, level) are left out."""
    out: dict[str, set[str]] = {}
    for family, inst in gm_score.INSTRUMENTS.items():
        for tag in inst.tags:
            out.setdefault(tag, set()).add(classes[family])
    return {t: c.pop() if len(c) == 1 else "mixed" for t, c in out.items()}


def merge(tables: list[list[dict]]) -> list[dict]:
    """Rows of several training banks against one other bank, merged program by program: the
    most samples shared and the closest sound over the training banks (a model trained on
    several banks has heard an instrument if any of them plays it alike)."""
    return [dict(rows[0], shared=max(r["shared"] for r in rows),
                 total=max(r["total"] for r in rows), sound=max(r["sound"] for r in rows))
            for rows in zip(*tables)]


def _per_tag(path: str, expected_split: str) -> dict[str, float]:
    """Per-tag ROC-AUC of a metrics.json; ValueError if it is the report of another split."""
    report = json.loads(Path(path).read_text())
    split = report.get("split")
    if split is not None and split != expected_split:
        raise ValueError(f"{path}: a report of split {split!r}, where --metrics expects "
                         f"{expected_split!r} here (order: the training banks' test, then one "
                         "per --unseen bank)")
    return {r["tag"]: r["roc_auc"] for r in report["per_tag"] if r.get("roc_auc") is not None}


def _banks(text: str) -> list[str]:
    return [b.strip() for b in text.split(",") if b.strip()]


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--training", default="merlin",
                   help="comma-separated training banks (names or .sf2 paths)")
    p.add_argument("--unseen", default="timgm6mb",
                   help="comma-separated banks to compare with them")
    p.add_argument("--metrics", nargs="*", default=[],
                   help="per-tag reports (metrics.json): the test on the training banks, then "
                        "one per --unseen bank")
    args = p.parse_args(argv)
    training, unseen = _banks(args.training), _banks(args.unseen)
    if not training or not unseen:
        p.error("--training and --unseen each need a bank")
    if args.metrics and len(args.metrics) != 1 + len(unseen):
        p.error(f"--metrics needs 1 + {len(unseen)} reports, got {len(args.metrics)}")
    if importlib.util.find_spec("sf2utils") is None:
        print("error: benchmarks/bank_overlap.py needs sf2utils: pip install -e \".[test]\" "
              "(or pip install sf2utils)", file=sys.stderr)
        return 2
    try:
        return _report(training, unseen, args.metrics)
    except (soundfont.BankError, OSError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _report(training: list[str], unseen: list[str], metrics: list[str]) -> int:
    train_names = [soundfont.bank_name(b) for b in training]
    expected = ["test"] + [f"test_{soundfont.bank_name(u)}" for u in unseen]
    aucs = [_per_tag(m, e) for m, e in zip(metrics, expected)]
    samples = {b: preset_samples(b) for b in training + unseen}
    tables = {u: [overlap(t, u, samples[t], samples[u]) for t in training] for u in unseen}
    classes = {u: family_classes(merge(tables[u])) for u in unseen}

    print("samples: the training preset's samples found bit for bit in the other bank's; "
          "sound: |correlation| of one note's renders; class: what the other bank shares with "
          f"{' + '.join(train_names)}")
    head = f"{'family':12s} {'program':>7s}"
    for u in unseen:
        for t in train_names:
            head += f" | {soundfont.bank_name(u) + ' vs ' + t:>28s} {'sound':>6s}"
        head += f" | {'class':>12s}"
    print(head)
    first = tables[unseen[0]][0]
    for i, row in enumerate(first):
        line = f"{row['family']:12s} {'kit' if row['program'] is None else row['program']:>7}"
        for u in unseen:
            for table in tables[u]:
                r = table[i]
                line += f" | {str(r['shared']) + '/' + str(r['total']):>28s} {r['sound']:6.3f}"
            line += f" | {classes[u][row['family']]:>12s}"
        print(line)
    if not aucs:
        return 0
    own = aucs[0]
    print()
    print(f"mean ROC-AUC of the instrument tags by what each bank shares with "
          f"{' + '.join(train_names)} (test on the training banks / on that bank)")
    for u, auc in zip(unseen, aucs[1:]):
        by_tag = tag_classes(classes[u])
        print(f"{soundfont.bank_name(u)}:")
        for cls in ("same sound", "same samples", "mixed", "distinct"):
            tags = [t for t, c in by_tag.items() if c == cls and t in auc and t in own]
            if tags:
                print(f"  {cls:12s} {len(tags):2d} tags: {np.mean([own[t] for t in tags]):.4f} / "
                      f"{np.mean([auc[t] for t in tags]):.4f}  ("
                      + ", ".join(f"{t} {own[t]:.2f}/{auc[t]:.2f}" for t in tags) + ")")
        undefined = sorted(t for t in by_tag if t not in auc or t not in own)
        if undefined:
            print(f"  left out, ROC-AUC undefined (no positives or no negatives): "
                  f"{', '.join(undefined)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
