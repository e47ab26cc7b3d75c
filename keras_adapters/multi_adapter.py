"""Several tasks on one frozen backbone, for serving from one SavedModel.

Each task model brings its adapter wrappers, the original sublayers its
method trains (Houlsby's layer norms) and its head. One pristine backbone is
loaded; for each task, its layers are installed at their sites in that
backbone (the wrappers re-pointed at the shared original layers), the task's
signature is traced, and the originals are put back. The traced functions
share the backbone's variables, so `tf.saved_model.save` stores them once.
"""

import tensorflow as tf

from keras_adapters import presets
from keras_adapters.data import clean_text
from keras_adapters.injection import encoder_layers
from keras_adapters.injection import get_injection
from keras_adapters.injection import replace_sublayer
from keras_adapters.injection import resolve_site


def _task_layers(model, backbone):
    """[(parent in `backbone`, attribute, task layer)] for one task model."""
    injection = get_injection(model.backbone)
    if injection is None or not injection.config.freezes_backbone:
        method = None if injection is None else injection.config.method
        raise ValueError(
            f"Task with method {method!r} trains the whole backbone (or was merged) "
            "and cannot share one; export it on its own."
        )
    own = {e.name: e for e in encoder_layers(model.backbone)}
    installs = []
    for path, wrapper in injection.wrappers.items():
        encoder_name, site = path.split("/", 1)
        parent, attr = resolve_site(backbone.get_layer(encoder_name), site)
        # The wrapper now calls the shared original layer, not its own copy.
        replace_sublayer(wrapper, "base", getattr(parent, attr))
        installs.append((parent, attr, wrapper))
    for encoder in encoder_layers(backbone):
        if not injection.config.applies_to_layer(encoder.name):
            continue
        for site in injection.config.trainable_sites:
            parent, attr = resolve_site(encoder, site)
            own_parent, own_attr = resolve_site(own[encoder.name], site)
            installs.append((parent, attr, getattr(own_parent, own_attr)))
    return installs


def _head(model):
    """The task's inference head as a function of backbone outputs."""
    layer_names = {layer.name for layer in model.layers}
    pooling = model.get_layer("mean_pooling") if "mean_pooling" in layer_names else None
    logits = model.get_layer("logits")
    activation = model.get_layer("probabilities")

    def head(outputs, inputs):
        if pooling is None:
            pooled = outputs["pooled_output"]
        else:
            pooled = pooling(outputs["sequence_output"], inputs["padding_mask"])
        return tf.cast(activation(logits(pooled)), tf.float32)

    return head, [layer for layer in (pooling, logits, activation) if layer is not None]


def shared_backbone_tasks(models):
    """(`tf.Module`, signatures {classify_<name>, serving_default}).

    Args:
        models: dict of task name -> `AdapterTextClassifier` (consumed: their
            wrappers are re-pointed at the shared backbone).
    """
    from keras_adapters.export import _Task

    if not models:
        raise ValueError("No task models to export.")
    first = next(iter(models.values()))
    fingerprints = {m.backbone_fingerprint for m in models.values()}
    if len(fingerprints) != 1:
        raise ValueError(
            "All adapters must be trained on the same backbone checkpoint to share it; "
            f"got {len(fingerprints)} different ones."
        )
    backbone = presets.load_backbone(first.preset)
    if presets.weights_fingerprint(backbone) != first.backbone_fingerprint:
        raise ValueError(f"Preset {first.preset!r} no longer holds the checkpoint the adapters were trained on.")

    module = tf.Module()
    module.backbone = backbone
    module.task_layers = []
    module.preprocessors = []
    signatures = {}
    for name, model in models.items():
        installs = _task_layers(model, backbone)
        head, head_layers = _head(model)
        module.task_layers.append([layer for _, _, layer in installs] + head_layers)
        module.preprocessors.append(model.preprocessor)
        task = _Task(model)

        def classify(text, task=task, head=head):
            text = tf.reshape(text, [-1])
            inputs = task.model.preprocessor(clean_text(text, task.max_bytes))
            probabilities = head(backbone(inputs, training=False), inputs)
            label_id = tf.argmax(probabilities, axis=-1)
            return {
                "probabilities": probabilities,
                "label_id": label_id,
                "label": tf.gather(task.class_names, label_id),
            }

        originals = [(parent, attr, getattr(parent, attr)) for parent, attr, _ in installs]
        for parent, attr, layer in installs:
            replace_sublayer(parent, attr, layer)
        try:
            signatures[f"classify_{name}"] = tf.function(
                classify,
                input_signature=[tf.TensorSpec([None], tf.string, name="text")],
                autograph=False,  # plain tensor code; no Python control flow to convert
            ).get_concrete_function()
        finally:
            for parent, attr, layer in originals:
                replace_sublayer(parent, attr, layer)
    signatures["serving_default"] = signatures[f"classify_{next(iter(models))}"]
    return module, signatures
