"""Small pieces the model's parts share: input names, ids checks, head records."""

import numpy as np
import tensorflow as tf
from keras import ops

from keras_adapters import tasks

TOKEN_INPUTS = ("token_ids", "segment_ids", "padding_mask")
DEFAULT_NAME = "default"


def from_head(attribute, default=None):
    """A property read from the head that gives the model's output."""
    return property(
        lambda self: getattr(self._output_head(), attribute, default),
        doc=f"The output head's `{attribute}` (`{default}` without a head).",
    )


def make_head(record, **layer_kwargs):
    return tasks.get_task(record.get("task") or tasks.TEXT_CLASSIFICATION).make_head(record, **layer_kwargs)


def flatten_names(names):
    return [names] if isinstance(names, str) else [n for x in names for n in flatten_names(x)]


def as_tensors(data):
    """Lists of strings and numbers -> arrays `from_tensor_slices` takes."""
    if isinstance(data, tuple):
        return tuple(as_tensors(d) for d in data)
    if isinstance(data, dict):
        return {k: as_tensors(v) for k, v in data.items()}
    if isinstance(data, list):
        return np.asarray(data, dtype=object if data and isinstance(data[0], str) else None)
    return data


def checked_ids(ids, count, name):
    """`ids` (int32), with an error for any outside `[0, count)`.

    Keras' `take` wraps negative indices around (-1 is the last adapter or
    vocabulary entry), which would answer for another adapter or word. The
    assertion stops TensorFlow graphs (Keras, SavedModel); TFLite drops
    assertions, so negative ids also become `count`, which its GATHER refuses
    as it refuses any index past the end.
    """
    ids = tf.cast(ids, tf.int32)
    bad = tf.logical_or(ids < 0, ids >= count)
    check = tf.debugging.Assert(
        tf.logical_not(tf.reduce_any(bad)),
        [f"{name} must be in [0, {count}); got", tf.boolean_mask(ids, bad)],
        summarize=5,
    )
    with tf.control_dependencies([check]):
        return tf.where(ids < 0, count, ids)


def complete_token_inputs(x):
    """Fill in `segment_ids` (zeros) and `padding_mask` (`token_ids != 0`)."""
    token_ids = x["token_ids"]
    out = {"token_ids": token_ids}
    out["segment_ids"] = x["segment_ids"] if "segment_ids" in x else ops.zeros_like(token_ids)
    out["padding_mask"] = x["padding_mask"] if "padding_mask" in x else ops.not_equal(token_ids, 0)
    if "adapter_id" in x:  # a Route's per-row adapter index
        out["adapter_id"] = x["adapter_id"]
    return out
