#!/usr/bin/env python3
"""Writes tensorboard/events.out.tfevents.fixture with TensorBoard's own protobuf classes and record writer: a
file_version event, then scalar summaries at fixed wall times, as histodistill's TensorBoardWriter must write them
byte for byte. Then reads the file back with TensorBoard's event reader and checks the scalars.

Run once with tensorboard installed (pip install tensorboard; 2.21.0 made the committed file):
    python3 Tests/Fixtures/make_tensorboard_fixture.py
"""
import json, os
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.record_writer import RecordWriter
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

here = os.path.dirname(os.path.abspath(__file__))
folder = os.path.join(here, 'tensorboard')
os.makedirs(folder, exist_ok=True)
path = os.path.join(folder, 'events.out.tfevents.fixture')
# (wall time, step, [(tag, value)]): the same inputs the Swift test gives its writer.
records = [(1764460800.25, 1, [('train/loss', 1.25), ('train/lr', 0.001)]),
           (1764460801.5, 2, [('train/loss', 0.875), ('train/kd_loss', 0.5), ('train/lr', 0.00095)]),
           (1764460803.0, 3, [('train/loss', 0.625), ('val/accuracy', 0.8125)])]
with open(path, 'wb') as f:
    w = RecordWriter(f)
    w.write(event_pb2.Event(wall_time=1764460800.0, file_version='brain.Event:2').SerializeToString())
    for t, step, values in records:
        s = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=tag, simple_value=v) for tag, v in values])
        w.write(event_pb2.Event(wall_time=t, step=step, summary=s).SerializeToString())
    w.flush()
acc = EventAccumulator(folder); acc.Reload()
read = {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()['scalars']}
assert read['train/loss'] == [(1, 1.25), (2, 0.875), (3, 0.625)], read
assert read['val/accuracy'] == [(3, 0.8125)], read
json.dump({'records': [[t, s, v] for t, s, v in records], 'scalars': read}, open(os.path.join(folder, 'expected.json'), 'w'), indent=1)
print('wrote', path, os.path.getsize(path), 'bytes; TensorBoard reads', sorted(read))
