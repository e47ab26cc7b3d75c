"""Counting what trains: `parameter_report`."""

import math

from keras_adapters.core import injection


def _count(weights):
    return sum(math.prod(w.shape) for w in weights)


def parameter_report(model):
    """Total, trainable and per-group parameter counts of an adapted model.

    Groups: `adapter` (weights the adapters and fusions added, including
    Houlsby's per-adapter layer norms), `backbone_trainable` (original
    backbone weights that train: everything for full fine-tuning),
    `backbone_frozen`, and `head` (the heads, outside the backbone).
    `trainable` counts what trains now (see `model.train_adapter`).

    Returns:
        dict with `total`, `trainable`, `non_trainable`, `trainable_fraction`,
        `method` and `groups` (each group: `total` and `trainable`).

    Example:
    ```python
    parameter_report(model)["trainable_fraction"]  # 0.0104 for Houlsby/MiniLM
    ```
    """
    backbone = model.backbone
    adapter_ids = {id(w) for w in injection.adapter_weights(backbone)}
    backbone_ids = {id(w) for w in backbone.weights}
    groups = {"adapter": [], "backbone_trainable": [], "backbone_frozen": [], "head": []}
    for w in model.weights:
        if id(w) in adapter_ids:
            groups["adapter"].append(w)
        elif id(w) in backbone_ids:
            groups["backbone_trainable" if w.trainable else "backbone_frozen"].append(w)
        else:
            groups["head"].append(w)
    trainable_ids = {id(w) for w in model.trainable_weights}
    total = _count(model.weights)
    trainable = _count(model.trainable_weights)
    active = model.active_adapters
    return {
        "method": model.adapter_config().method if isinstance(active, str) else None,
        "active_adapters": active if active is None or isinstance(active, str) else repr(active),
        "total": total,
        "trainable": trainable,
        "non_trainable": total - trainable,
        "trainable_fraction": trainable / total if total else 0.0,
        "groups": {
            name: {
                "total": _count(ws),
                "trainable": _count([w for w in ws if id(w) in trainable_ids]),
            }
            for name, ws in groups.items()
        },
    }
