"""The explanation report in a real browser: Debian's headless Chromium driven by Selenium through
Debian's chromedriver (no browser is downloaded at run time; .ci/run installs both with apt-get).

Pages load from file:// with no console errors; pressing play moves the cursor; clicking a row
seeks; unticking a tag removes its rows; every auralised audio element loads with the input's
duration; the index filters, sorts and pages. Without the browser the tests are skipped with the
reason (shown by `pytest -ra`), never passed silently.
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import jax
import numpy as np
import pytest
import soundfile as sf

from tagger_jax.checkpoint import save_model
from tagger_jax.config_base import base_config
from tagger_jax.explain import report, runner
from tagger_jax.models import build_model

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run", "--mute-audio",
         "--autoplay-policy=no-user-gesture-required", "--window-size=1400,1000")
TAGS = ("t0", "t1", "t2", "50$ off_$ </script>")
SECONDS = 6.0


def _missing() -> str | None:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "the selenium package is not installed (pip install -e '.[test]')"
    for path in (CHROMIUM, CHROMEDRIVER):
        if not Path(path).exists():
            return (f"{path} is missing: install Debian's chromium and chromium-driver "
                    "(apt-get install chromium chromium-driver; .ci/run does)")
    return None


@pytest.fixture(scope="module")
def browser():
    reason = _missing()
    if reason:
        pytest.skip(f"BROWSER TESTS NOT RUN: {reason}")
    import os

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")  # never let Selenium Manager fetch anything
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    """A tiny random model with 64-frame chunks (the page does not care about accuracy)."""
    root = tmp_path_factory.mktemp("browser-model")
    config = base_config()
    m = config.model
    m.conv_channels, m.attention_channels, m.attention_heads, m.intermediate = 2, 32, 4, 64
    config.features.chunk_frames = 64
    model = build_model(config.model, len(TAGS))
    variables = jax.jit(model.init)(jax.random.PRNGKey(0), np.zeros((1, 96, 64), np.float32))
    from tagger_jax.checkpoint import load_model

    return load_model(save_model(root / "model", variables, config, TAGS))


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory, loaded):
    """A --listen report of one 6-second two-tone file whose name and a tag hold `$` and
    `</script>`."""
    root = tmp_path_factory.mktemp("browser")
    t = np.arange(int(SECONDS * 16000)) / 16000
    wave = 0.3 * np.sin(2 * np.pi * 440 * t) * (t < 3) + 0.3 * np.sin(2 * np.pi * 2000 * t) * (
        t >= 3)
    audio = root / "50$ off_$ <b>.wav"
    sf.write(audio, wave.astype(np.float32), 16000)
    out = root / "out"
    options = runner.ExplainOptions(methods=("attention", "contribution", "grad_x_input"),
                                    tags=("t0", TAGS[3]), listen=True, plot=False, batch_size=4,
                                    listen_methods=runner.AURALISED)
    result = runner.explain_inputs(loaded, runner.file_items(loaded, [audio]), out, options,
                                   progress=False, log=None)
    assert not result.failed, result.failed
    return out


def page_of(out: Path) -> Path:
    (page,) = [p for p in out.glob("*.html") if p.name != "index.html"]
    return page


def severe(driver) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def wait_for(driver, script: str, timeout: float = 15.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = driver.execute_script(script)
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for: {script}")


def open_page(driver, path: Path):
    driver.get(path.as_uri())
    wait_for(driver, "return document.body.dataset.ready === '1'")


def test_page_loads_from_file_url_without_console_errors(browser, out_dir):
    open_page(browser, page_of(out_dir))
    assert severe(browser) == []
    title = browser.find_element("css selector", "h1").text
    assert title.endswith("50$ off_$ <b>.wav")  # shown as text, not parsed as markup
    labels = [e.text for e in browser.find_elements("css selector", ".row .title")]
    assert f"contribution: {TAGS[3]}" in labels and "log-mel spectrogram" in labels


LABEL_BOXES = """
var rect = function (e) { var r = e.getBoundingClientRect();
  return {left: r.left, right: r.right, top: r.top, bottom: r.bottom, text: e.textContent}; };
var ticks = Array.from(document.querySelectorAll('#axis-box .tick'));
var hz = Array.from(document.querySelectorAll('#spectrogram .hz')).map(rect);
hz.sort(function (a, b) { return a.top - b.top; });
return {axis: rect(document.getElementById('axis-box')), ticks: ticks.map(rect),
        last_time: Number(ticks[ticks.length - 1].dataset.time),
        spec: rect(document.querySelector('#spectrogram canvas.map')), hz: hz,
        width: document.documentElement.clientWidth,
        canvas_px: Array.from(document.querySelectorAll('canvas.map')).map(function (c) {
          return [c.width, c.getBoundingClientRect().width]; })};
"""


def _inside(box: dict, outer: dict) -> bool:
    return (box["left"] >= outer["left"] - 0.5 and box["right"] <= outer["right"] + 0.5
            and box["top"] >= outer["top"] - 0.5 and box["bottom"] <= outer["bottom"] + 0.5)


@pytest.mark.parametrize("zoom", [0, 2])
def test_every_axis_label_is_inside_its_plot(browser, out_dir, zoom):
    """At the 1400-px window: the time axis's last tick (the end of the track when the whole
    track is shown) and the spectrogram's top Hz label lie inside the plot and the viewport."""
    open_page(browser, page_of(out_dir))
    for _ in range(zoom):
        browser.find_element("id", "zoom-in").click()
    got = browser.execute_script(LABEL_BOXES)
    if zoom == 0:
        assert got["last_time"] == pytest.approx(SECONDS)  # the tick at the end of the track
    assert len(got["ticks"]) >= 3
    for tick in got["ticks"]:
        assert _inside(tick, got["axis"]) and tick["right"] <= got["width"], (tick, got["axis"])
    for px, css in got["canvas_px"]:  # drawn 1:1, not stretched (labels and cursor line up)
        assert px == pytest.approx(css, abs=0.5)
    assert got["hz"][0]["text"] == "8 kHz"  # the top label: the Nyquist band at 16 kHz
    for label in got["hz"]:
        assert _inside(label, got["spec"]), (label, got["spec"])
    assert severe(browser) == []


def test_play_moves_the_cursor_and_a_click_seeks(browser, out_dir):
    open_page(browser, page_of(out_dir))
    left0 = browser.execute_script("return document.getElementById('cursor').style.left")
    browser.find_element("id", "play").click()
    wait_for(browser, "return Number(document.getElementById('cursor').dataset.time) > 0.3")
    assert browser.execute_script(
        "return document.getElementById('cursor').style.left") != left0
    browser.find_element("id", "play").click()  # pause
    canvas = browser.find_element("css selector", "#spectrogram canvas.map")
    width = canvas.size["width"]
    from selenium.webdriver.common.action_chains import ActionChains

    ActionChains(browser).move_to_element_with_offset(canvas, int(width * 0.25), 0).click() \
        .perform()  # offsets are from the centre: 75% of the way across
    t = wait_for(browser, "var t = Number(document.getElementById('cursor').dataset.time);"
                          "return t > 3 ? t : 0")
    assert abs(t - 0.75 * SECONDS) < 0.2
    # The zoom buttons keep the cursor on screen (they zoomed around the middle, and a cursor
    # at 75% left the view; from a new user's trial).
    for _ in range(3):
        browser.find_element("id", "zoom-in").click()
    box = browser.execute_script(
        "var c = document.getElementById('cursor').getBoundingClientRect(),"
        " p = document.querySelector('#spectrogram canvas.map').getBoundingClientRect();"
        "return [c.left, p.left, p.right];")
    assert box[1] <= box[0] <= box[2], box
    assert severe(browser) == []


def test_unticking_a_tag_removes_its_rows(browser, out_dir):
    open_page(browser, page_of(out_dir))
    visible = lambda: [(e.get_attribute("data-method"), e.get_attribute("data-tag"))
                       for e in browser.find_elements("css selector", ".row.maprow")
                       if e.is_displayed()]
    before = visible()
    assert ("contribution", "t0") in before and ("grad_x_input", "t0") in before
    box = [b for b in browser.find_elements("css selector", "#tags-choice input")
           if b.get_attribute("data-value") == "t0"][0]
    box.click()
    after = visible()
    assert all(tag != "t0" for _, tag in after) and ("attention", "") in after
    assert ("contribution", TAGS[3]) in after and len(after) == len(before) - 2
    box.click()
    assert visible() == before


def test_auralised_audio_elements_load_with_the_input_duration(browser, out_dir):
    open_page(browser, page_of(out_dir))
    ids = browser.execute_script(
        "return Array.from(document.querySelectorAll('audio')).map(a => a.id)")
    # original + (attention + 2 tags x 2 methods) x (kept, removed)
    assert len(ids) == 1 + 2 * 5 and "audio-original" in ids
    wait_for(browser, "return Array.from(document.querySelectorAll('audio'))"
                      ".every(a => a.readyState >= 1 || a.error)")
    got = browser.execute_script("return Array.from(document.querySelectorAll('audio'))"
                                 ".map(a => [a.id, a.error && a.error.code, a.duration])")
    for name, error, duration in got:
        assert error is None and abs(duration - SECONDS) < 0.05, (name, error, duration)
    summary = json.loads(next(p for p in out_dir.glob("*.json")
                              if p.name != "failures.json").read_text())
    assert len(summary["files"]["audio"]["maps"]) == 5
    browser.find_element("css selector", ".play-kept").click()
    wait_for(browser, "return document.getElementById('source').dataset.source"
                      ".endsWith('-kept') && !document.querySelector('audio[id$=\"-kept\"]')"
                      ".paused")
    assert severe(browser) == []


def test_index_filters_sorts_and_pages_many_inputs(browser, out_dir, tmp_path):
    for f in out_dir.iterdir():
        if f.suffix in (".json", ".html") and f.name != "index.html":
            shutil.copy(f, tmp_path / f.name)
    base = json.loads(next(p for p in tmp_path.glob("*.json")).read_text())
    for i in range(249):  # 250 inputs: 3 pages of 100
        s = dict(base, input=f"song {i:03d} <x>.mp3", key=f"k{i}", duration_s=float(i),
                 top_tags=[{"tag": "drums" if i % 2 else "piano", "probability": i / 1000}])
        report.write_json(tmp_path / f"k{i}.json", s)
    report.write_index(tmp_path)
    open_page(browser, tmp_path / "index.html")
    rows = lambda: [r for r in browser.find_elements("css selector", "#inputs tbody tr")
                    if r.is_displayed()]
    assert len(rows()) == 100 and "page 1 of 3" in browser.find_element("id", "page").text
    browser.find_element("id", "filter").send_keys("piano")
    assert "125 of 250" in browser.find_element("id", "count").text
    browser.find_element("id", "filter").clear()
    browser.find_element("id", "filter").send_keys("song 199")  # every word must match
    assert browser.find_element("id", "count").text.startswith("1 of 250")
    browser.find_element("id", "filter").send_keys("\b" * 8 + " ")  # 'clear' fires no event
    assert browser.find_element("id", "count").text.startswith("250 of 250")
    header = browser.find_elements("css selector", "#inputs th")[1]  # duration
    header.click()
    header.click()  # descending
    first = rows()[0].find_element("css selector", "td").text
    assert first == "song 248 <x>.mp3"  # the longest
    assert severe(browser) == []


GAP_PIXELS = """
var D = JSON.parse(document.getElementById('data').textContent);
var c = document.querySelector('.row.maprow[data-method="attention"] canvas.map');
var duration = Math.max(D.duration_s, D.spec.frames * D.spec.step_s + D.spec.start_s);
var g = c.getContext('2d');
return arguments[0].map(function (t) {
  return Array.from(g.getImageData(Math.round(t / duration * c.width), 8, 1, 1).data); });
"""


def test_paper_windows_page_hatches_the_gaps_and_states_coverage(browser, loaded, tmp_path):
    """--windows paper on a 20 s file (1251 frames, 16 chunks of 64 at i * 74): the frames
    between chunks (e.g. 1.02-1.18 s) and after the last (18.8 s on) are drawn hatched grey in
    a map row, covered frames in the map's colours; the page states the coverage."""
    t = np.arange(20 * 16000) / 16000
    sf.write(tmp_path / "long.wav", (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32),
             16000)
    options = runner.ExplainOptions(methods=("attention", "contribution", "grad_x_input"),
                                    tags=("t0", TAGS[3]), windows="paper", plot=False,
                                    batch_size=4)
    out = tmp_path / "out"
    result = runner.explain_inputs(loaded, runner.file_items(loaded, [tmp_path / "long.wav"]),
                                   out, options, progress=False, log=None)
    assert not result.failed, result.failed
    open_page(browser, page_of(out))
    assert severe(browser) == []
    covered = 16 * 64  # 16 disjoint chunks (hop 74 > 64)
    text = browser.find_element("id", "coverage").text
    assert f"{100 * covered / 1251:.1f}%" in text and f"({covered * 0.016:.1f} s)" in text
    gap_a, gap_b, inside = browser.execute_script(GAP_PIXELS, [1.1, 19.5, 0.5])
    for px in (gap_a, gap_b):  # hatch: greys between its lines (#a0a0a0) and ground (#d9d9d9)
        assert px[0] == px[1] == px[2] and 150 <= px[0] <= 225, px
    assert not inside[0] == inside[1] == inside[2], inside
