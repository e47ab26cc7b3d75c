"""Frozen-prefix caching: skip the encoder layers no adapter acts in.

With adapters only in the top encoder layers (`target_layers`), the layers
below them are frozen and, with their dropout off, give the same outputs
for an example in every epoch. `cache_frozen_prefix(model, dataset)`
computes those outputs once, keeps them in memory (examples x length x
hidden x 2 bytes in mixed_bfloat16: 160 MB for 1,600 BBC News articles at
length 128; 4 bytes in float32 and autocast, whose residual stream is
float32), and returns a dataset the model trains on directly: each epoch
then runs only the top layers, forward and backward.

What changes: dropout in the frozen layers (and the embeddings) is off,
since their outputs are computed once; everything else is the same
function. Evaluation and prediction never see the cache (dropout is off
there anyway), so a model trained this way is used and saved as any other.

Example:
```python
model = ka.AdapterTextClassifier.from_preset(
    ka.default_preset(), num_classes=5,
    method=ka.HoulsbyConfig(target_layers="transformer_layer_[45]"))
train = ka.cache_frozen_prefix(model, train)   # 4 of 6 layers run once
model.fit(train, epochs=3)
```
"""

import numpy as np
import tensorflow as tf

from keras_adapters.core import injection

#: The input key of the cached hidden states (the model reads it).
PREFIX_OUTPUT = "prefix_output"
PREFIX_DEPTH = "prefix_depth"


def cache_frozen_prefix(model, dataset, batch_size=None, shuffle=True, seed=None):
    """`dataset` with each example's frozen-prefix outputs in place of its tokens.

    Args:
        model: an `AdapterTextClassifier` with the adapters to train active
            (`train_adapter` or `set_active_adapters` already called).
        dataset: a `tf.data.Dataset` of `(token inputs, labels)` batches, as
            `text_dataset_from_directory` gives. Read once.
        batch_size: of the returned dataset (default: the first batch's).
        shuffle: reshuffle the examples every epoch (the input's own
            shuffling happened once, when it was read).
        seed: for that shuffle.

    Returns:
        A dataset of `({"prefix_output", "padding_mask", "prefix_depth"},
        labels)` batches; `class_names` is kept.

    Raises:
        ValueError: when the active adapters leave no layer frozen (the
            message says how to target the top layers only).
    """
    depth = injection.frozen_prefix_depth(model.backbone)
    if depth == 0:
        raise ValueError(
            "The active adapters act in (or train) the first encoder layer, so no layer can be cached. "
            "Put them in the top layers only, e.g. target_layers='transformer_layer_[45]' for the top "
            "2 of 6 (method options in the CLI: --method-option target_layers=...)."
        )
    compute = tf.function(lambda inputs: injection.run_prefix(model.backbone, inputs, depth), reduce_retracing=True)
    hidden, masks, labels = [], [], []
    for inputs, y in dataset:
        hidden.append(compute({k: inputs[k] for k in ("token_ids", "segment_ids", "padding_mask")}).numpy())
        masks.append(np.asarray(inputs["padding_mask"], bool))
        labels.append(np.asarray(y))
    if not hidden:
        raise ValueError("The dataset is empty: nothing to cache.")
    batch_size = batch_size or len(hidden[0])
    length = max(h.shape[1] for h in hidden)  # bucketed batches differ: pad (masked)
    hidden = np.concatenate([_pad(h, length) for h in hidden])
    masks = np.concatenate([_pad(m, length) for m in masks])
    features = {
        PREFIX_OUTPUT: hidden,
        "padding_mask": masks,
        PREFIX_DEPTH: np.full(len(hidden), depth, np.int32),
    }
    cached = tf.data.Dataset.from_tensor_slices((features, np.concatenate(labels)))
    if shuffle:
        cached = cached.shuffle(len(hidden), seed=seed, reshuffle_each_iteration=True)
    cached = cached.batch(batch_size).prefetch(tf.data.AUTOTUNE)
    for name in ("class_names", "privacy_unit"):  # what training reads off the dataset
        if hasattr(dataset, name):
            setattr(cached, name, getattr(dataset, name))
    return cached


def _pad(array, length):
    width = [(0, 0)] * array.ndim
    width[1] = (0, length - array.shape[1])
    return np.pad(array, width)
