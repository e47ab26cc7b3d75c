"""What the decoder families' tests share: an adapter's weights made nonzero,
the logits of whole rows, greedy decoding by full forwards of a reference
model (what the cached loop must reproduce), a unit's layer and site."""

import numpy as np

from keras_adapters.core import injection


def randomize(model, name, seed=0, scales_around_one=False):
    """Nonzero values for every weight of adapter `name` (they start as the
    identity); (IA)^3 scales around 1 with `scales_around_one`."""
    rng = np.random.default_rng(seed)
    for w in injection.adapter_weights_by_key(model.backbone, name).values():
        shift = 1.0 if scales_around_one and w.path.endswith("scale") else 0.0
        w.assign(rng.normal(0, 0.3, w.shape).astype("float32") + shift)


def logits(model, ids):
    """float64 logits `[batch, length, vocab]` of unpadded rows `ids`."""
    return np.asarray(model({"token_ids": ids, "padding_mask": np.ones_like(ids, bool)}), np.float64)


def greedy_by_full_forwards(reference, prompt, steps, **kwargs):
    """`steps` greedy tokens after `prompt`, each from a full forward of `reference`."""
    ids = list(prompt)
    for _ in range(steps):
        ids.append(int(np.argmax(reference(np.array([ids]), **kwargs)[0, -1])))
    return ids[len(prompt):]


def layer_site(key):
    """(layer index, site) of a unit key (`transformer_layer_3/query`, `decoder_block_3/query`)."""
    layer, site = key.split("/")
    return int(layer.rsplit("_", 1)[1]), site


def assert_adapted_logits(got, expected, backbone_logits):
    """`got` within 2e-4 of `expected`'s largest logit, and `expected` at least 1e-2 of it away
    from the untouched backbone's logits: the check can fail (an adapter that did nothing, or
    a reference that left it out, would match only by luck)."""
    scale = np.abs(expected).max()
    np.testing.assert_allclose(got, expected, atol=2e-4 * scale)
    assert np.abs(backbone_logits - expected).max() > 1e-2 * scale
