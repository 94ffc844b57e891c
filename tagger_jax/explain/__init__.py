"""Explanations of the tagger's outputs (docs/explanations.md).

  - `methods`: pure functions of (model, variables, batch): the paper's attention heat map and
    tag-wise contribution map, attention rollout, gradient x input, integrated gradients.
  - `stitch`: maps of a long track's windows back on its time axis.
  - `plotting`: the paper's figure layout (spectrogram on top, one heat-map row per map).
  - `report`: JSON summaries, failures.json and index.html of a run.
  - `runner`: many inputs in device batches, with resuming and per-input error reports
    (`tagger-jax explain`).
"""
