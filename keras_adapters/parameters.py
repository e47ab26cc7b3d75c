"""Counting what trains: `parameter_report`."""

import math

from keras_adapters import injection


def _count(weights):
    return sum(math.prod(w.shape) for w in weights)


def parameter_report(model):
    """Total, trainable and per-group parameter counts of an adapted model.

    Groups: `adapter` (weights the method added), `backbone_trainable`
    (original backbone weights the method trains, e.g. Houlsby's layer
    norms, or everything for full fine-tuning), `backbone_frozen`, and
    `head` (weights outside the backbone).

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
    config = getattr(model, "adapter_config", None)
    return {
        "method": None if config is None else config.method,
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
