"""Training precision: the dtype policy that is fastest and safe on this machine.

Keras' convention is kept: a model follows the global dtype policy
(`float32` unless `keras.config.set_dtype_policy` says otherwise), and
`AdapterTextClassifier.from_preset(..., dtype=...)` takes any policy. The
fast path is one word: `dtype="auto"` (Python) and `--precision auto` (the
CLI's default) both resolve here, to `mixed_float16` on GPUs,
`mixed_bfloat16` on CPUs with bf16 matrix instructions (`float32` for
question answering) and `float32` elsewhere. (The served graph's precision is `keras_adapters.serving.graph`'s.)
"""

import tensorflow as tf

PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")


def cpu_has_fast_bfloat16():
    """True when the CPU has bf16 matrix instructions (AVX512-BF16 or AMX)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


def default_precision(task=None):
    """The fastest numerically safe policy here for `task` (a `tasks.Task`;
    see BENCHMARKS.md).

    GPUs: `mixed_float16` (Keras adds loss scaling). CPUs with bf16 matrix
    instructions: `mixed_bfloat16` (measured 1.5x faster than float32 for
    adapter training on an AVX512-BF16 CPU, same BBC News accuracy within
    two test documents), except for tasks that are not `bf16_safe` (question
    answering).
    Otherwise `float32`.
    """
    if isinstance(task, str):
        raise TypeError(f"default_precision takes a Task (keras_adapters.tasks.get_task({task!r})), not a name.")
    if tf.config.list_physical_devices("GPU"):
        return "mixed_float16"
    if cpu_has_fast_bfloat16() and getattr(task, "bf16_safe", True):
        return "mixed_bfloat16"
    return "float32"


def resolve_precision(precision, task=None):
    """`"auto"`/`None` -> `default_precision(task)`; a known policy as it is."""
    if precision in (None, "auto"):
        return default_precision(task)
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be 'auto' or one of {PRECISIONS}, got {precision!r}.")
    return precision
