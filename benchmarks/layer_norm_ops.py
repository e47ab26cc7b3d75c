"""One layer norm's time in the served graph's formulations, op for op (issue 29).

A bf16 `keras.layers.LayerNormalization` over MiniLM's 384 features, 12
chained in one `tf.function` traced for any batch and length (as a served
graph is: with a static shape grappler folds the ones and zeros the oneDNN
pattern needs), at 16, 128, 512 and 4096 rows (batch 1 × 16 and × 128
tokens, 4 × 128, 32 × 128), the variants' calls alternated, medians per
layer norm:

- `keras`: Keras' own ops (casts of both weights, `tf.nn.moments`'
  `SquaredDifference`, the normalisation through `x * inv + (beta - mean * inv)`);
- `served`: `keras_adapters.serving.graph._float32_layer_norm`, what an
  export runs below 256 rows;
- `served_onednn`: `keras_adapters.serving.graph._onednn_layer_norm`, what
  it runs from 256 rows (one `_MklLayerNorm` after grappler's remapper);
- `moments_f32`: float32 weights with `tf.nn.moments` (tried first);
- `fused_batch_norm`: `FusedBatchNormV3` over `[1, rows, features, 1]` in
  float32 from float32 weight variables (0.32's try: the remapper leaves it).

    .venv/bin/python benchmarks/layer_norm_ops.py [--intra-op-threads 1]

Writes benchmarks/results/layer_norm_ops.json.
"""

import argparse
import json
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

FEATURES, CHAIN = 384, 12


def variants(layer):
    import tensorflow as tf

    from keras_adapters.serving import graph

    gamma, beta = (tf.Variable(tf.cast(w, tf.float32)) for w in (layer.gamma, layer.beta))

    def moments_f32(x):
        x = tf.cast(x, tf.float32)
        mean, variance = tf.nn.moments(x, axes=[-1], keepdims=True)
        return tf.cast((x - mean) * (tf.math.rsqrt(variance + layer.epsilon) * gamma) + beta, tf.bfloat16)

    def fused_batch_norm(x):
        shape = tf.shape(x)
        rows = tf.reshape(tf.cast(x, tf.float32), [1, -1, FEATURES, 1])
        ones = tf.ones([shape[0] * shape[1]], tf.float32)
        y = tf.raw_ops.FusedBatchNormV3(x=rows, scale=ones, offset=tf.zeros_like(ones), mean=tf.zeros([0]),
                                        variance=tf.zeros([0]), epsilon=layer.epsilon, data_format="NCHW",
                                        is_training=True)[0]
        return tf.cast(tf.reshape(y, shape) * gamma + beta, tf.bfloat16)

    return {"keras": layer.call, "served": graph._float32_layer_norm(layer),
            "served_onednn": graph._onednn_layer_norm(layer), "moments_f32": moments_f32,
            "fused_batch_norm": fused_batch_norm}


def measure(rows_list, calls):
    import keras
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(0)
    layer = keras.layers.LayerNormalization(epsilon=1e-12, dtype="bfloat16")
    layer.build((None, None, FEATURES))
    layer.gamma.assign(1 + 0.1 * rng.standard_normal(FEATURES))
    layer.beta.assign(0.1 * rng.standard_normal(FEATURES))
    out = {}
    for rows in rows_list:
        batch, length = max(1, rows // 128), min(rows, 128)
        x = tf.constant(rng.standard_normal((batch, length, FEATURES)), tf.bfloat16)
        functions = {}
        for name, norm in variants(layer).items():
            def chain(x, norm=norm):
                for _ in range(CHAIN):
                    x = norm(x)
                return x
            functions[name] = tf.function(chain, autograph=False).get_concrete_function(
                tf.TensorSpec([None, None, FEATURES], x.dtype))
        reference = tf.cast(functions["keras"](x), tf.float32)
        times = {name: [] for name in functions}
        for _ in range(max(10, calls // rows)):
            for name, function in functions.items():
                start = time.perf_counter()
                function(x)
                times[name].append(time.perf_counter() - start)
        out[rows] = {name: {"us": round(1e6 * statistics.median(t) / CHAIN, 1),
                            "max_gap_after_12": float(tf.reduce_max(tf.abs(
                                tf.cast(functions[name](x), tf.float32) - reference)))}
                     for name, t in times.items()}
        print(rows, {name: v["us"] for name, v in out[rows].items()}, flush=True)
    return out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", default="16,128,512,4096")
    parser.add_argument("--calls", type=int, default=6000, help="divided by the rows")
    parser.add_argument("--output", default="benchmarks/results/layer_norm_ops.json")
    parser.add_argument("--intra-op-threads", type=int, default=0,
                        help="TensorFlow's intra-op threads (0: one per core); TF Serving's batching runs 1")
    args = parser.parse_args()
    if args.intra_op_threads:
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(args.intra_op_threads)
    from common import git_revision
    from common import machine_description

    results = measure([int(r) for r in args.rows.split(",")], args.calls)
    with open(args.output, "w") as f:
        json.dump({"machine": machine_description(), "git": git_revision(),
                   "intra_op_threads": args.intra_op_threads or "one per core",
                   "units": "us per layer norm (median); max_gap_after_12: largest difference from keras' "
                            "output after 12 chained layer norms", "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
