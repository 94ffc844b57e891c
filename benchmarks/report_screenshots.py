#!/usr/bin/env python
"""Screenshots of an explanation report for docs/explanations.md (docs/figures/report_*.png).

Makes a 3-minute track of 12 sections of 15 s with `tagger_jax.synth` (piano and a female voice
in different sections), explains `piano` and `vocal` with `--listen`, opens the page in Debian's
headless Chromium (Selenium + chromedriver, as the browser tests) and saves: the whole track
fitted to the width, the same zoomed on 40 s while the auralised `piano` contribution plays, and
the index.

    python benchmarks/report_screenshots.py --checkpoint runs/explanations_benchmark/best_model
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PLAN = [("piano", "bass"), ("female voice", "drums"), ("piano", "drums"), ("guitar", "bass"),
        ("female voice", "organ"), ("piano",), ("synth", "drums"), ("female voice", "bass"),
        ("piano", "female voice"), ("cello", "flute"), ("piano", "bass"), ("female voice",)]
SECTION_S = 15.0


def make_track(path: Path) -> None:
    import soundfile as sf

    from tagger_jax import synth

    parts = [synth.generate_clip((2026, 11, i), SECTION_S, instruments=inst, tempo="medium",
                                 level="medium")[0] for i, inst in enumerate(PLAN)]
    sf.write(path, np.concatenate(parts), synth.SAMPLE_RATE)


def compact(path: Path, margin: int = 12) -> None:
    """Crops a screenshot to its content (the page's white bottom left out) and stores it with a
    256-colour palette: the files docs/ carries are a third of the browser's PNGs."""
    from PIL import Image, ImageChops

    image = Image.open(path).convert("RGB")
    box = ImageChops.difference(image, Image.new("RGB", image.size, "white")).getbbox()
    if box is not None:
        image = image.crop((0, 0, image.width, min(image.height, box[3] + margin)))
    image.quantize(256, dither=Image.Dither.NONE).save(path, optimize=True)


def shoot(page: Path, index: Path, out: Path) -> list[Path]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--mute-audio",
                 "--disable-background-networking", "--disable-component-update",
                 "--no-first-run", "--autoplay-policy=no-user-gesture-required",
                 "--window-size=1500,1050", "--hide-scrollbars"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    shots = []
    try:
        driver.get(page.as_uri())
        time.sleep(1.5)
        shots.append(out / "report_track.png")
        driver.save_screenshot(str(shots[-1]))
        for _ in range(2):
            driver.find_element("id", "zoom-in").click()
        driver.execute_script("document.querySelector('#spectrogram canvas.map').click()")
        buttons = [b for b in driver.find_elements("css selector", ".row.maprow")
                   if b.get_attribute("data-method") == "contribution"
                   and b.get_attribute("data-tag") == "piano"]
        buttons[0].find_element("css selector", ".play-kept").click()
        time.sleep(3.0)
        shots.append(out / "report_zoomed.png")
        driver.save_screenshot(str(shots[-1]))
        driver.set_window_size(1300, 500)
        driver.get(index.as_uri())
        time.sleep(0.5)
        shots.append(out / "report_index.png")
        driver.save_screenshot(str(shots[-1]))
    finally:
        driver.quit()
    for shot in shots:
        compact(shot)
    return shots


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", required=True, help="model trained on synthetic_tags")
    p.add_argument("--work", default="/tmp/report_screenshots", help="scratch directory")
    p.add_argument("--out", default=str(ROOT / "docs" / "figures"))
    args = p.parse_args(argv)

    from tagger_jax import checkpoint, cli
    from tagger_jax.synth import SYNTH_TAGS

    tags = checkpoint.load_model(args.checkpoint).tags
    if tuple(tags) != tuple(SYNTH_TAGS):  # the track and the explained tags are synthetic_tags'
        print(f"error: {args.checkpoint}: report_screenshots.py needs a model trained on "
              f"synthetic_tags (its tags piano, vocal, ...); this model's tags are "
              f"{', '.join(tags[:4])}, ...", file=sys.stderr)
        return 2
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    track = work / "three minutes.wav"
    if not track.exists():
        make_track(track)
    report = work / "report"
    rc = cli.main(["explain", "--checkpoint", args.checkpoint, str(track), "--out", str(report),
                   "--methods", "attention,contribution,grad_x_input", "--tags", "piano,vocal",
                   "--listen", "--batch-size", "8"])
    if rc:
        return rc
    page = report / "three_minutes.wav.html"
    shots = shoot(page, report / "index.html", Path(args.out))
    print("\n".join(map(str, shots)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
