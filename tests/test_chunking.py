"""Chunking rules against hand-computed numbers and brute-force checks."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

from tagger_jax import chunking as ch


def _spec(t: int, bands: int = 96) -> np.ndarray:
    """Entries encode (band, frame), so any slice can be checked by value."""
    return (np.arange(bands)[:, None] * 100000 + np.arange(t)[None, :]).astype(np.float32)


def test_eval_chunk_starts_authors_formula():
    # A MagnaTagATune clip: (1813 - 256) // 16 = 97.
    starts = ch.eval_chunk_starts(1813, 256, 16)
    np.testing.assert_array_equal(starts, [97 * i for i in range(16)])
    assert starts[-1] == 1455 and starts[-1] + 256 == 1711 < 1813  # does NOT reach the end
    np.testing.assert_array_equal(ch.eval_chunk_starts(1000, 256, 4), [0, 186, 372, 558])
    np.testing.assert_array_equal(ch.eval_chunk_starts(256, 256, 16), np.zeros(16))
    np.testing.assert_array_equal(ch.eval_chunk_starts(271, 256, 16), np.zeros(16))  # 15 // 16 = 0
    np.testing.assert_array_equal(ch.eval_chunk_starts(272, 256, 16), np.arange(16))
    # Waveforms: samples instead of frames. (464000 - 65610) // 16 = 24899.
    np.testing.assert_array_equal(ch.eval_chunk_starts(464000, ch.WAVEFORM_CHUNK, 16),
                                  24899 * np.arange(16))
    with pytest.raises(ValueError, match="shorter than one chunk"):
        ch.eval_chunk_starts(255, 256, 16)


def test_eval_chunks_stack_the_slices():
    x = _spec(1813)
    chunks = ch.eval_chunks(x, 256, 16)
    assert chunks.shape == (16, 96, 256) and chunks.dtype == np.float32
    for i in range(16):
        np.testing.assert_array_equal(chunks[i], x[:, 97 * i:97 * i + 256])
    wave = np.arange(200000, dtype=np.float32)
    wchunks = ch.eval_chunks(wave, ch.WAVEFORM_CHUNK, 16)
    hop = (200000 - 65610) // 16
    assert wchunks.shape == (16, 65610)
    np.testing.assert_array_equal(wchunks[:, 0], hop * np.arange(16))
    np.testing.assert_array_equal(wchunks[5], wave[5 * hop:5 * hop + 65610])


@pytest.mark.parametrize("t,chunk,hop,expected", [
    (1000, 256, 256, [0, 256, 512, 744]),  # 768 + 256 > 1000: last window aligned to the end
    (1024, 256, 256, [0, 256, 512, 768]),  # hop lands exactly on the end: nothing added
    (256, 256, 128, [0]),
    (300, 256, 128, [0, 44]),
    (1813, 256, 128, list(range(0, 1557, 128)) + [1557]),
])
def test_sliding_window_starts(t, chunk, hop, expected):
    np.testing.assert_array_equal(ch.sliding_window_starts(t, chunk, hop), expected)


@pytest.mark.parametrize("t", [256, 257, 300, 511, 512, 1000, 1813])
@pytest.mark.parametrize("hop", [1, 100, 128, 255, 256])
def test_sliding_windows_cover_every_frame(t, hop):
    starts = ch.sliding_window_starts(t, 256, hop)
    covered = np.zeros(t, int)
    for s in starts:
        assert 0 <= s and s + 256 <= t  # every window is full length, inside the clip
        covered[s:s + 256] += 1
    assert covered.min() >= 1
    assert np.all(np.diff(starts) > 0) and starts[0] == 0 and starts[-1] == t - 256
    regular = starts[:-1] if len(starts) > 1 else starts
    assert np.all(np.diff(regular) == hop)  # all but the aligned last one step by `hop`


def test_sliding_windows_values_and_waveforms():
    x = _spec(1000, bands=3)
    windows = ch.sliding_windows(x, 256, 256)
    assert windows.shape == (4, 3, 256)
    np.testing.assert_array_equal(windows[-1], x[:, 744:])
    wave = np.arange(150000, dtype=np.float32)
    w = ch.sliding_windows(wave, ch.WAVEFORM_CHUNK, ch.WAVEFORM_CHUNK)
    assert w.shape == (3, 65610)
    np.testing.assert_array_equal(w[-1], wave[-65610:])
    with pytest.raises(ValueError, match="hop"):
        ch.sliding_window_starts(1000, 256, 0)
    with pytest.raises(ValueError, match="skip"):
        ch.sliding_window_starts(1000, 256, 257)
    with pytest.raises(ValueError, match="shorter"):
        ch.sliding_windows(_spec(100), 256, 128)


def test_pad_repeats_short_clips():
    x = _spec(100, bands=2)
    padded, was_padded = ch.pad_to_length(x, 256)
    assert was_padded and padded.shape == (2, 256)
    expected_frames = np.array([t % 100 for t in range(256)])
    np.testing.assert_array_equal(padded, x[:, expected_frames])
    np.testing.assert_array_equal(padded[:, 200:256], x[:, 0:56])
    # long enough: unchanged, never truncated
    long = _spec(300, bands=2)
    same, was_padded = ch.pad_to_length(long, 256)
    assert not was_padded and same is long
    # waveforms and single-step clips
    w, was_padded = ch.pad_to_length(np.array([1.0, 2.0, 3.0]), 7)
    assert was_padded
    np.testing.assert_array_equal(w, [1, 2, 3, 1, 2, 3, 1])
    np.testing.assert_array_equal(ch.pad_to_length(np.array([[5.0]]), 4)[0], [[5, 5, 5, 5]])
    with pytest.raises(ValueError, match="empty"):
        ch.pad_to_length(np.zeros((96, 0)), 256)


def test_pad_with_warning_names_the_file():
    with pytest.warns(ch.ShortInputWarning, match=r"^short_clip\.mp3: only 100 time steps.*256"):
        out = ch.pad_with_warning(_spec(100), 256, "short_clip.mp3")
    assert out.shape == (96, 256)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning when nothing was padded
        out = ch.pad_with_warning(_spec(256), 256, "ok.mp3")
    assert out.shape == (96, 256)
    # A padded clip then gives valid evaluation chunks (all at start 0).
    assert ch.eval_chunks(ch.pad_to_length(_spec(10), 256)[0]).shape == (16, 96, 256)


def test_random_crop_is_a_slice_and_reproducible():
    x = _spec(1813)
    crops = [ch.random_crop(x, 256, np.random.default_rng(7)) for _ in range(2)]
    np.testing.assert_array_equal(crops[0], crops[1])  # same seed, same crop
    start = int(crops[0][0, 0])  # band 0 holds the frame index
    np.testing.assert_array_equal(crops[0], x[:, start:start + 256])
    assert start == ch.random_crop_start(1813, 256, np.random.default_rng(7))
    rng = np.random.default_rng(0)
    starts = np.array([ch.random_crop_start(300, 256, rng) for _ in range(4000)])
    assert starts.min() == 0 and starts.max() == 44  # both ends reachable, nothing beyond
    counts = np.bincount(starts, minlength=45)
    assert counts.min() > 40 and counts.max() < 140  # roughly uniform (expected 89 each)
    assert ch.random_crop_start(256, 256, rng) == 0
    wave = np.arange(100000, dtype=np.float32)
    wcrop = ch.random_crop(wave, ch.WAVEFORM_CHUNK, np.random.default_rng(3))
    np.testing.assert_array_equal(wcrop, wave[int(wcrop[0]):int(wcrop[0]) + 65610])
    with pytest.raises(ValueError, match="pad it first"):
        ch.random_crop(_spec(100), 256, rng)
