"""Does the [CLS] readout hold back a model trained with a frame head? (docs/training.md)

    python benchmarks/frame_head_readout.py --checkpoint runs/soundfont [--splits test,...]
        [--data-dir D] [--json out.json]

For a model trained with `model.frame_head` on a dataset with clip tags (e.g. the main job's),
scores each test split with the validation protocol (16 evenly spaced chunks per clip,
`chunking.eval_chunks`; ROC-AUC per tag and its mean, `evaluation.tag_metrics`) read three
ways from one forward pass per chunk:

  - `tag head ([CLS])`: the model's output, the mean of its sigmoids over the chunks (what
    `evaluate` and validation report);
  - `frame head, mean`: the frame head's sigmoids averaged over the chunk's positions, then over
    the chunks;
  - `frame head, max`: their maximum over the positions, averaged over the chunks.

The frame head is a training aid, not the model's output; where its pooled scores are well above
the tag head's, the positions' features hold the tags and what is slow to learn is the readout
through [CLS] (the last layer's [CLS] query, the pooler and the classifier). Splits default to
`test` and the checkpoint's `data.extra_test_splits`, of the dataset the model was trained on
(its `data.name` and builder config), read from `--data-dir` (default: the model's
`data.data_dir`). About 3 minutes on 2 cores for the main job's two test splits.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

READOUTS = ("tag head ([CLS])", "frame head, mean", "frame head, max")


def split_scores(loaded, split: str, data_dir: str | None = None
                 ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(labels (clips, tags), {readout: scores (clips, tags)}) of one split of the model's
    dataset, from `data_dir` (default: the model's `data.data_dir`)."""
    import jax
    import jax.numpy as jnp

    from tagger_jax import chunking
    from tagger_jax.datasets import load_split
    from tqdm import tqdm

    cfg = loaded.config
    source, _ = load_split(cfg.data.name, split, data_dir or cfg.data.data_dir,
                           cfg.data.builder_config or None)

    @jax.jit
    def forward(variables, x):
        logits, frame_logits = loaded.model.apply(variables, x, return_frame_logits=True)
        frames = jax.nn.sigmoid(frame_logits)
        return (jax.nn.sigmoid(logits).mean(0), frames.mean((0, 1)), frames.max(1).mean(0))

    labels, scores = [], {r: [] for r in READOUTS}
    for i in tqdm(range(len(source)), desc=split, unit="clip"):
        record = source[i]
        x = chunking.eval_chunks(np.asarray(record["mel"], np.float32),
                                 cfg.features.chunk_frames)
        for readout, s in zip(READOUTS, forward(loaded.variables, jnp.asarray(x))):
            scores[readout].append(np.asarray(s))
        labels.append(np.asarray(record["tags"]))
    return np.asarray(labels), {r: np.asarray(s) for r, s in scores.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True, help="a workdir or a model directory")
    parser.add_argument("--splits", default="", help="comma-separated (default: test and the "
                        "config's data.extra_test_splits)")
    parser.add_argument("--data-dir", default=None,
                        help="TFDS data dir of the model's dataset (default: the model's)")
    parser.add_argument("--json", help="write every number here")
    args = parser.parse_args(argv)

    from tagger_jax import errors

    return errors.guarded(readouts, args, prog="benchmarks/frame_head_readout.py")


def readouts(args: argparse.Namespace) -> int:
    """The three readouts of each split, printed (and written to `--json`)."""
    from tagger_jax.checkpoint import load_model, resolve_model_dir
    from tagger_jax.evaluation import tag_metrics

    loaded = load_model(resolve_model_dir(args.checkpoint))
    if not loaded.config.model.frame_head:
        print(f"error: {args.checkpoint}: the model has no frame head (model.frame_head)",
              file=sys.stderr)
        return 2
    splits = ([s for s in args.splits.split(",") if s] if args.splits
              else ["test", *loaded.config.data.extra_test_splits])
    from tagger_jax.datasets import load_split

    cfg = loaded.config.data
    for split in splits:  # every name checked before minutes of scoring (a trial's typo)
        load_split(cfg.name, split, args.data_dir or cfg.data_dir, cfg.builder_config or None)
    report = {}
    for split in splits:
        labels, scores = split_scores(loaded, split, args.data_dir)
        report[split] = {r: tag_metrics(s, labels, loaded.tags) for r, s in scores.items()}
    def roc(split: str, readout: str) -> dict[str, float]:
        return {t["tag"]: t["roc_auc"] for t in report[split][readout]["per_tag"]
                if t["roc_auc"] is not None}

    tags = [t for t in loaded.tags if all(t in roc(s, READOUTS[0]) for s in splits)]
    print(f"{loaded.directory}: ROC-AUC, mean of 16 chunks a clip")
    for split in splits:
        print(f"\n{split}\n| readout | mean | " + " | ".join(tags) + " |")
        print("|---" * (len(tags) + 2) + "|")
        for r in READOUTS:
            per_tag = roc(split, r)
            print(f"| {r} | {report[split][r]['roc_auc_mean']:.4f} | "
                  + " | ".join(f"{per_tag[t]:.2f}" for t in tags) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
