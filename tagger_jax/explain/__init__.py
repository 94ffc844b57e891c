"""Explanations of the tagger's outputs (docs/explanations.md).

  - `methods`: pure functions of (model, variables, batch): the paper's attention heat map and
    tag-wise contribution map, attention rollout, gradient x input, integrated gradients.
  - `stitch`: maps of a long track's windows back on its time axis.
  - `plotting`: the paper's figure layout (spectrogram on top, one heat-map row per map), with
    colour bars, Hz and dB scales and long tracks wrapped onto lines.
  - `auralise`: the audio of what a map points at (STFT masked by the map, original phase) and
    of the rest.
  - `report`: JSON summaries, failures.json, and the self-contained web report (a page per input
    with playback, and index.html); its script and style are in `assets/`.
  - `runner`: many inputs in device batches, with resuming and per-input error reports
    (`tagger-jax explain`).
"""
