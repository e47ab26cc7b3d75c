"""Where a served call's time goes: per-op profile of a SavedModel's `serve_token_ids`.

Traces `--calls` calls at one shape with TensorFlow's profiler, reads the
host threads' op events from the trace (XPlane) and sums them per op type
(ops of one call counted once however many threads ran them: close to wall
time on 2 cores), medians over the calls. Run it in the environment of the
serving process you want to see (e.g. `TF_ONEDNN_ASSUME_FROZEN_WEIGHTS=1`).

    .venv/bin/python benchmarks/serving_profile.py SAVEDMODEL_DIR --batch 1 --length 128 [--top 25]

Prints a table (op type, ms per call, ops per call) and the total.
"""

import argparse
import collections
import glob
import os
import statistics
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def profile(path, batch, length, calls, text=None):
    import numpy as np
    import tensorflow as tf
    import tensorflow_text  # noqa: F401 (the SavedModel's tokenizer ops)
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    signatures = tf.saved_model.load(path).signatures
    if text is None:
        serve = signatures["serve_token_ids"]
        ids = tf.constant(np.random.RandomState(0).randint(1000, 30000, size=(batch, length)).astype("int32"))
        x = {"token_ids": ids, "segment_ids": tf.zeros_like(ids), "padding_mask": tf.ones_like(ids)}
    else:
        serve, x = signatures["serving_default"], {"text": tf.constant([text] * batch)}
    for _ in range(5):
        serve(**x)
    logdir = tempfile.mkdtemp(prefix="serving_profile_")
    tf.profiler.experimental.start(logdir)
    for call in range(calls):
        with tf.profiler.experimental.Trace("call", step_num=call, _r=1):
            serve(**x)
    tf.profiler.experimental.stop()
    space = xplane_pb2.XSpace()
    space.ParseFromString(open(glob.glob(f"{logdir}/**/*.xplane.pb", recursive=True)[0], "rb").read())
    return _per_op(space, calls)


def _per_op(space, calls):
    """{op type: ([ms per call], [count per call])} from the host plane's op events."""
    host = next(p for p in space.planes if p.name == "/host:CPU")
    names = {k: v.name for k, v in host.event_metadata.items()}
    steps, ops = [], []
    for line in host.lines:
        for event in line.events:
            name = names.get(event.metadata_id, "")
            start = line.timestamp_ns + event.offset_ps / 1000
            if name == "call":
                steps.append((start, start + event.duration_ps / 1000))
            elif line.name.startswith("tf_Compute") and ":" in name and "::" not in name:
                # The executor's threads: one "node name:op type" event per op
                # (the Eigen threads' events are the same ops' parallel parts).
                ops.append((start, event.duration_ps / 1e9, name.rsplit(":", 1)[1]))
    per_step = [collections.defaultdict(lambda: [0.0, 0]) for _ in steps]
    for start, ms, op_type in ops:
        for i, (a, b) in enumerate(steps):
            if a <= start <= b:
                per_step[i][op_type][0] += ms
                per_step[i][op_type][1] += 1
    kinds = set().union(*per_step) if per_step else set()
    return {k: ([s[k][0] for s in per_step], [s[k][1] for s in per_step]) for k in kinds}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("path")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--text", help="profile `serving_default` on this text (tokenization included) instead")
    args = parser.parse_args()
    table = profile(args.path, args.batch, args.length, args.calls, args.text)
    rows = sorted(((statistics.median(ms), statistics.median(n), k) for k, (ms, n) in table.items()), reverse=True)
    print(f"{'op type':40s} {'ms/call':>8s} {'ops/call':>8s}")
    for ms, n, kind in rows[: args.top]:
        print(f"{kind:40s} {ms:8.2f} {n:8.0f}")
    print(f"{'total':40s} {sum(r[0] for r in rows):8.2f} {sum(r[1] for r in rows):8.0f}")


if __name__ == "__main__":
    main()
