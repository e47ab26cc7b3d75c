"""Training precision: the dtype policy that is fastest and safe on this machine.

Keras' convention is kept: a model follows the global dtype policy
(`float32` unless `keras.config.set_dtype_policy` says otherwise), and
`AdapterTextClassifier.from_preset(..., dtype=...)` takes any policy. The
fast path is one word: `dtype="auto"` (Python) and `--precision auto` (the
CLI's default) both resolve here (`default_precision`).

Besides Keras' policies, two *autocast* precisions split the work as
`torch.autocast` does: `autocast_bfloat16` / `autocast_float16` compute the
encoder's matrix products (the attention and feed-forward projections, the
query-key and probability-value products) in bf16 / fp16, and keep the
residual stream, layer norms, the attention softmax, adapters at residual
sites, the heads' logits and the loss in float32; activations (GELU)
are computed in float32 and rounded once. Keras' `mixed_bfloat16`
hands every layer's bf16 output to the next one, residual adds and layer
norms included (1.24% relative error on MiniLM's output on SQuAD text,
0.79% under autocast; BENCHMARKS.md). (The served graph's precision is
`keras_adapters.serving.graph`'s.)
"""

import keras
import tensorflow as tf
from keras import ops

from keras_adapters.core import injection

#: Autocast precision -> the Keras policy of its matrix-product layers.
AUTOCAST = {"autocast_bfloat16": "mixed_bfloat16", "autocast_float16": "mixed_float16"}
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16", *AUTOCAST)


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
    instructions: `mixed_bfloat16` (1.5x faster than float32 for adapter
    training on an AVX512-BF16 CPU; BBC News and WNUT-16 scored as in
    float32), and for tasks that are not `bf16_safe` (question answering)
    `autocast_bfloat16`: 1.45x faster than float32, within 5% of
    `mixed_bfloat16`, and on SQuAD full fine-tuning scored as float32 (F1
    54.6 against 54.7, same seed and settings). Otherwise `float32`.
    """
    if isinstance(task, str):
        raise TypeError(f"default_precision takes a Task (keras_adapters.tasks.get_task({task!r})), not a name.")
    if tf.config.list_physical_devices("GPU"):
        return "mixed_float16"
    if cpu_has_fast_bfloat16():
        return "mixed_bfloat16" if getattr(task, "bf16_safe", True) else "autocast_bfloat16"
    return "float32"


def usable_here(precision):
    """Whether `precision` makes sense on this machine (float16 ones need a GPU)."""
    return precision not in ("mixed_float16", "autocast_float16") or bool(tf.config.list_physical_devices("GPU"))


def resolve_precision(precision, task=None):
    """`"auto"`/`None` -> `default_precision(task)`; a known policy as it is."""
    if precision in (None, "auto"):
        return default_precision(task)
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be 'auto' or one of {PRECISIONS}, got {precision!r}.")
    return precision


def _is_autocast(precision):
    return isinstance(precision, str) and precision in AUTOCAST  # a DTypePolicy is not hashable


def backbone_dtype(precision):
    """The dtype policy to build a backbone with for `precision` (autocast
    precisions build it in float32, then `apply_autocast`)."""
    return "float32" if _is_autocast(precision) else precision


def apply_autocast(backbone, precision):
    """Compute `backbone`'s matrix products in `precision`'s low dtype.

    Only the compute dtype of those layers changes (their variables stay
    float32, as under any mixed policy). Keras casts a layer's floating
    inputs to its compute dtype, so a float32 layer after a bf16 one (the
    dropout before each residual add, a layer norm) takes its input back to
    float32, and the attention's softmax layer (float32) does so for the
    attention scores. A precision that is not an autocast one is left as
    the backbone was built.
    """
    if not _is_autocast(precision):
        return backbone
    if injection.get_state(backbone) is not None:
        raise ValueError("apply_autocast sets a backbone's precision before adapters are added, not after.")
    for encoder in injection.encoder_layers(backbone):
        for layer in injection.matmul_layers(encoder):
            layer.dtype_policy = AUTOCAST[precision]
            activation = getattr(layer, "activation", None)
            if activation not in (None, keras.activations.linear) and not isinstance(activation, Float32Activation):
                layer.activation = Float32Activation(activation)
    return backbone


@keras.saving.register_keras_serializable(package="keras_adapters")
class Float32Activation:
    """An activation computed in float32 on a bf16/fp16 input, its output
    rounded once to the input's dtype, as PyTorch's kernels do. (GELU's tanh
    approximation in bf16 rounds after each of its five operations: that
    alone put 0.73% of relative error on MiniLM's output on SQuAD, 0.53% in
    float32.)"""

    def __init__(self, activation):
        self.activation = activation

    def __call__(self, x):
        return ops.cast(self.activation(ops.cast(x, "float32")), x.dtype)

    def get_config(self):
        return {"activation": keras.activations.serialize(self.activation)}

    @classmethod
    def from_config(cls, config):
        return cls(keras.activations.deserialize(config["activation"]))


def backbone_precision(backbone):
    """The precision `backbone` computes in (an autocast one when its
    matrix-product layers compute in a lower dtype than the rest)."""
    name = backbone.dtype_policy.name
    matmul = {layer.dtype_policy.name for e in injection.encoder_layers(backbone) for layer in injection.matmul_layers(e)}
    for autocast, policy in AUTOCAST.items():
        if name == "float32" and matmul == {policy}:
            return autocast
    return name
