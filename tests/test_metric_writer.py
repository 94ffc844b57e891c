"""Training scalars (`tagger_jax.metric_writer`): a resumed run's TensorBoard events hide the
steps a killed run logged past its checkpoint, as metrics.jsonl drops them. The event files are
read here with a TFRecord reader written out from the format (length, masked CRCs, an Event
protocol buffer), not with the writer's code."""
from __future__ import annotations

import json
import struct
import time

from tensorboardX.proto import event_pb2

from tagger_jax.metric_writer import MetricWriter


def _events(path):
    data, events, at = path.read_bytes(), [], 0
    while at < len(data):
        (length,) = struct.unpack("<Q", data[at:at + 8])
        start = at + 12  # the length, then its masked CRC-32C
        event = event_pb2.Event()
        event.ParseFromString(data[start:start + length])
        events.append(event)
        at = start + length + 4  # the record, then its masked CRC-32C
    return events


def test_a_resumed_run_purges_the_killed_runs_later_tensorboard_steps(tmp_path):
    first = MetricWriter(tmp_path, resume_step=0)
    for step in range(1, 6):  # logged up to step 5, then killed; the checkpoint was at 3
        first.write(step, "train", {"loss": 1.0 / step})
    first.close()
    [old] = list((tmp_path / "tensorboard").iterdir())
    assert not any(e.HasField("session_log") for e in _events(old))  # a fresh run: no marker
    time.sleep(1.1)  # event file names hold the second they were opened
    resumed = MetricWriter(tmp_path, resume_step=3)
    resumed.write(4, "train", {"loss": 0.3})
    resumed.close()
    [new] = [p for p in (tmp_path / "tensorboard").iterdir() if p != old]
    marks = [(e.step, e.session_log.status) for e in _events(new) if e.HasField("session_log")]
    assert marks == [(4, event_pb2.SessionLog.START)]  # TensorBoard drops steps >= 4 before it
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text()
             .splitlines()]
    assert steps == [1, 2, 3, 4]
