"""TF Serving's batch threads on a CPU: one thread per batch, batches side by side,
against two threads per batch, one batch after the other (batching.config's choice).

Loads a SavedModel in a process set up as the server would be
(`--tensorflow_intra_op_parallelism`), and times 32 rows of 128 tokens as two
batches of 16: `parallel` runs them at once on two Python threads with one
intra-op thread each; `serial` runs them one after the other with two intra-op
threads each. Alternate the modes, in separate processes, and take medians:

    for r in 1 2 3; do for m in parallel serial; do
        .venv/bin/python benchmarks/batch_threads.py $m SAVEDMODEL_VERSION_DIR; done; done
"""

import json
import os
import statistics
import sys
import threading

from common import time_calls

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def main(mode, path, repeats=6):
    import numpy as np
    import tensorflow as tf
    import tensorflow_text  # noqa: F401 (the SavedModel's tokenizer ops)

    tf.config.threading.set_intra_op_parallelism_threads(1 if mode == "parallel" else 2)
    tf.config.threading.set_inter_op_parallelism_threads(2)
    serve = tf.saved_model.load(path).signatures["serve_token_ids"]
    ids = tf.constant(np.random.RandomState(0).randint(1000, 30000, size=(16, 128)).astype("int32"))
    x = dict(token_ids=ids, segment_ids=tf.zeros_like(ids), padding_mask=tf.ones_like(ids))

    def batch():
        serve(**x)

    def parallel():
        other = threading.Thread(target=batch)
        other.start()
        batch()
        other.join()

    times = time_calls(parallel if mode == "parallel" else (lambda: (batch(), batch())), repeats, warmup=2)
    print(json.dumps({"mode": mode, "wall_ms_32_rows": round(1000 * statistics.median(times["wall"]), 1),
                      "cpu_ms_32_rows": round(1000 * statistics.median(times["cpu"]), 1)}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
