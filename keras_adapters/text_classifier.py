"""AdapterTextClassifier: preprocessor + backbone with adapters + task head."""

import keras
import keras_hub
import numpy as np
import tensorflow as tf
from keras import ops

from keras_adapters import injection
from keras_adapters import presets
from keras_adapters.methods.registry import get_adapter_config

POOLINGS = ("cls", "mean")
TOKEN_INPUTS = ("token_ids", "segment_ids", "padding_mask")


@keras.saving.register_keras_serializable(package="keras_adapters")
class MaskedMeanPooling(keras.layers.Layer):
    """Mean of the token vectors where `padding_mask` is true.

    Example:
    ```python
    MaskedMeanPooling()(sequence_output, padding_mask)  # (batch, hidden)
    ```
    """

    def call(self, sequence, padding_mask):
        mask = ops.cast(ops.expand_dims(padding_mask, -1), sequence.dtype)
        total = ops.sum(sequence * mask, axis=1)
        count = ops.maximum(ops.sum(mask, axis=1), ops.cast(1.0, mask.dtype))
        return total / count

    def compute_output_shape(self, sequence_shape, padding_mask_shape):
        return (sequence_shape[0], sequence_shape[-1])


@keras.saving.register_keras_serializable(package="keras_adapters")
class AdapterTextClassifier(keras_hub.models.TextClassifier):
    """A text classifier on a pretrained backbone adapted with one method.

    The model owns its preprocessor, so `fit`, `evaluate` and `predict` take
    raw strings (as keras-hub tasks do); they also take dicts of
    already-tokenized `token_ids`, `segment_ids` and `padding_mask`. Its
    output is class probabilities (softmax, or sigmoid with `multi_label`).

    Construction injects the adapter into `backbone` (in place) and freezes
    what the method freezes; `model.backbone` is that adapted backbone.

    Args:
        backbone: a keras-hub BERT-style backbone (e.g. `BertBackbone`).
        num_classes: int, number of classes (labels, for multi-label).
        preprocessor: a keras-hub `TextClassifierPreprocessor`, or `None` to
            take token inputs only.
        adapter: a method name (`"houlsby"`, `"pfeiffer"`, `"lora"`, `"ia3"`,
            `"full"`, `"head"`), a config dict or an `AdapterConfig`. `None`
            leaves the backbone as it is (used after `merge_adapter()`).
        multi_label: bool, sigmoid outputs and binary cross-entropy, for
            multi-hot labels.
        pooling: `"cls"` (the backbone's pooled `[CLS]` output) or `"mean"`
            (mean of the token vectors, as sentence-transformers do).
        dropout: dropout before the classification layer.
        class_names: optional list of `num_classes` names, saved with the
            adapter so labels map by name.
        preset: how the backbone was loaded (recorded in adapter folders).
        backbone_fingerprint: sha256 of the untouched backbone weights;
            computed here when not given.

    Example:
    ```python
    model = AdapterTextClassifier.from_preset(
        default_preset(), num_classes=2, adapter="lora", sequence_length=64)
    model.fit(["good", "bad"], [1, 0], epochs=1)
    model.predict(["fine"])
    ```
    """

    def __init__(
        self,
        backbone,
        num_classes,
        preprocessor=None,
        adapter="houlsby",
        multi_label=False,
        pooling="cls",
        dropout=0.1,
        class_names=None,
        preset=None,
        backbone_fingerprint=None,
        merged_adapter=None,
        **kwargs,
    ):
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}.")
        if not multi_label and num_classes < 2:
            raise ValueError(
                "A single-label classifier needs num_classes >= 2 "
                f"(got {num_classes}); use multi_label=True for one binary label."
            )
        if class_names is not None:
            class_names = [str(c) for c in class_names]
            if len(class_names) != num_classes or len(set(class_names)) != num_classes:
                raise ValueError(
                    f"class_names must be {num_classes} distinct names, got {class_names}."
                )
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}.")
        config = None if adapter is None else get_adapter_config(adapter)
        if backbone_fingerprint is None:
            backbone_fingerprint = presets.weights_fingerprint(backbone)
        if config is not None and injection.get_injection(backbone) is None:
            injection.inject_adapters(backbone, config)
        elif config is None and merged_adapter is not None:
            # A merged LoRA/(IA)^3 model keeps its backbone frozen, as it was.
            for variable in backbone.weights:
                variable.trainable = False

        # Attributes that compile() (called by Task.__init__) reads.
        self.adapter_config = config
        self.multi_label = multi_label
        self.num_classes = num_classes

        self.backbone = backbone
        self.preprocessor = preprocessor
        inputs = backbone.input
        outputs = backbone(inputs)
        if pooling == "cls":
            pooled = outputs["pooled_output"]
        else:
            pooled = MaskedMeanPooling(dtype=backbone.dtype_policy, name="mean_pooling")(
                outputs["sequence_output"], inputs["padding_mask"]
            )
        pooled = keras.layers.Dropout(
            dropout, dtype=backbone.dtype_policy, name="classifier_dropout"
        )(pooled)
        logits = keras.layers.Dense(
            num_classes,
            kernel_initializer=keras.initializers.TruncatedNormal(stddev=0.02),
            dtype=backbone.dtype_policy,
            name="logits",
        )(pooled)
        # float32 probabilities under mixed precision, for a stable loss.
        probabilities = keras.layers.Activation(
            "sigmoid" if multi_label else "softmax",
            dtype="float32",
            name="probabilities",
        )(logits)
        super().__init__(inputs=inputs, outputs=probabilities, **kwargs)

        self.pooling = pooling
        self.dropout = dropout
        self.class_names = class_names
        self.preset = preset
        self.backbone_fingerprint = backbone_fingerprint
        self.merged_adapter = merged_adapter

    # ------------------------------------------------------------------ build
    @classmethod
    def from_preset(
        cls,
        preset,
        num_classes,
        adapter="houlsby",
        sequence_length=128,
        dtype=None,
        load_weights=True,
        **kwargs,
    ):
        """Load a backbone and its preprocessor, add an adapter and a head.

        Args:
            preset: a keras-hub preset name, a local folder (keras-hub format
                or a Hugging Face BERT folder) or `"default"` (the embedded
                all-MiniLM-L6-v2, see `default_preset()`).
            num_classes: number of classes.
            adapter: method name, config dict or `AdapterConfig`.
            sequence_length: tokens per example (longer texts are truncated).
            dtype: optional dtype policy for the backbone (e.g.
                `"mixed_bfloat16"`); defaults to Keras' global policy.
            load_weights: load the pretrained weights (`False`: random init).
            **kwargs: other `AdapterTextClassifier` arguments. `pooling`
                defaults to the checkpoint's own (`"mean"` for
                sentence-transformers folders that average, such as the
                default MiniLM; `"cls"` otherwise).
        """
        backbone = presets.load_backbone(preset, dtype=dtype, load_weights=load_weights)
        preprocessor = presets.load_preprocessor(preset, sequence_length)
        if kwargs.get("pooling") in (None, "auto"):
            kwargs["pooling"] = presets.default_pooling(preset)
        return cls(
            backbone=backbone,
            num_classes=num_classes,
            preprocessor=preprocessor,
            adapter=adapter,
            preset=presets.preset_reference(preset),
            **kwargs,
        )

    @classmethod
    def from_adapter(cls, directory, preset=None, dtype=None):
        """Rebuild a model saved with `save_adapter` (backbone from its preset).

        Args:
            directory: the adapter folder.
            preset: load the backbone from here instead of the recorded
                preset (it must be the same checkpoint; this is checked).
            dtype: optional dtype policy for the rebuilt model.
        """
        from keras_adapters import adapter_io

        return adapter_io.load_adapter(directory, preset=preset, dtype=dtype)

    # -------------------------------------------------------------- adapters
    @property
    def sequence_length(self):
        return None if self.preprocessor is None else self.preprocessor.sequence_length

    @property
    def default_learning_rate(self):
        config = self.adapter_config
        return 1e-3 if config is None else config.default_learning_rate

    def save_adapter(self, directory):
        """Write the trainable weights and config to a small folder.

        The folder holds `adapter_config.json` and `adapter_model.safetensors`
        (see `keras_adapters.adapter_io`); never a copy of the frozen backbone.
        """
        from keras_adapters import adapter_io

        return adapter_io.save_adapter(self, directory)

    def merge_adapter(self):
        """Fold a LoRA or (IA)^3 adapter into the backbone weights, in place.

        The outputs stay the same (up to float rounding) and no adapter layers
        are left, so the model runs at the plain backbone's speed. Bottleneck
        adapters cannot be merged. Returns the model.
        """
        merged = injection.merge_adapters(self.backbone)
        # Traced train/predict functions still call the removed wrappers.
        self.train_function = self.test_function = self.predict_function = None
        if self.compiled:
            # The optimizer's state belonged to the removed adapter weights.
            self.compile_from_config(self.get_compile_config())
        self.merged_adapter = merged.get_config()
        self.adapter_config = None
        return self

    # ---------------------------------------------------------------- export
    def export_saved_model(self, path, version=1, merge=True):
        """SavedModel for TF Serving at `path/<version>/` (see `keras_adapters.export`)."""
        from keras_adapters import export

        return export.export_saved_model(self, path, version=version, merge=merge)

    def export_tflite(self, path, sequence_length=None, quantize="none"):
        """`model.tflite` + `vocab.txt` + `labels.txt` in `path` (token-id inputs)."""
        from keras_adapters import export

        return export.export_tflite(self, path, sequence_length=sequence_length, quantize=quantize)

    # ---------------------------------------------------------- keras hooks
    def fit(
        self,
        x=None,
        y=None,
        batch_size=None,
        sample_weight=None,
        validation_split=None,
        validation_data=None,
        shuffle=True,
        **kwargs,
    ):
        """`keras.Model.fit`; in-memory data is shuffled every epoch.

        keras-hub tasks turn in-memory inputs into an unshuffled `tf.data`
        pipeline; like plain Keras, this shuffles them (unless
        `shuffle=False`). Datasets are used as given.
        """
        if x is not None and not isinstance(x, tf.data.Dataset):
            data = keras.utils.pack_x_y_sample_weight(x, y, sample_weight)
            num_examples = len(tf.nest.flatten(data)[0])
            if validation_split and validation_data is None:
                # Keras semantics: the last fraction, before shuffling.
                cut = int(num_examples * (1.0 - validation_split))
                validation_data = tf.nest.map_structure(lambda t: t[cut:], data)
                data = tf.nest.map_structure(lambda t: t[:cut], data)
                num_examples = cut
            ds = tf.data.Dataset.from_tensor_slices(_as_tensors(data))
            if shuffle:
                ds = ds.shuffle(num_examples, reshuffle_each_iteration=True)
            if validation_data is not None and not isinstance(
                validation_data, tf.data.Dataset
            ):
                validation_data = tf.data.Dataset.from_tensor_slices(
                    _as_tensors(validation_data)
                ).batch(batch_size or 32)
            x, y, sample_weight = ds.batch(batch_size or 32), None, None
            batch_size = None
        return super().fit(
            x,
            y,
            batch_size=batch_size,
            sample_weight=sample_weight,
            validation_data=validation_data,
            shuffle=False,  # done above for in-memory data
            **kwargs,
        )

    def preprocess_samples(self, x, y=None, sample_weight=None):
        if isinstance(x, dict) and "token_ids" in x:
            return keras.utils.pack_x_y_sample_weight(
                complete_token_inputs(x), y, sample_weight
            )
        return super().preprocess_samples(x, y=y, sample_weight=sample_weight)

    def compile(
        self,
        optimizer="auto",
        loss="auto",
        metrics="auto",
        learning_rate=None,
        **kwargs,
    ):
        """Compile with the method's defaults for anything left `"auto"`.

        Defaults: AdamW at the method's learning rate (adapters ~1e-3, full
        fine-tuning 3e-5) with weight decay 0.01 (not on biases and norms)
        and global-norm clipping at 1.0 (`training.make_optimizer`);
        cross-entropy (binary for multi-label); accuracy and macro-F1
        (`training.classification_metrics`).
        """
        from keras_adapters import training

        if optimizer == "auto":
            optimizer = training.make_optimizer(learning_rate or self.default_learning_rate)
        if loss == "auto":
            loss = (
                keras.losses.BinaryCrossentropy()
                if self.multi_label
                else keras.losses.SparseCategoricalCrossentropy()
            )
        if metrics == "auto":
            metrics = training.classification_metrics(self.num_classes, self.multi_label)
        keras.Model.compile(self, optimizer=optimizer, loss=loss, metrics=metrics, **kwargs)

    def compile_from_config(self, config):
        # Restores the saved optimizer (and its state) on load_model.
        config = keras.saving.deserialize_keras_object(config)
        self.compile(**config)
        if self.built:
            self.optimizer.build(self.trainable_variables)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_classes": self.num_classes,
                "adapter": None
                if self.adapter_config is None
                else self.adapter_config.get_config(),
                "multi_label": self.multi_label,
                "pooling": self.pooling,
                "dropout": self.dropout,
                "class_names": self.class_names,
                "preset": self.preset,
                "backbone_fingerprint": self.backbone_fingerprint,
                "merged_adapter": self.merged_adapter,
            }
        )
        return config


def _as_tensors(data):
    """Lists of strings and numbers -> arrays `from_tensor_slices` takes."""
    if isinstance(data, tuple):
        return tuple(_as_tensors(d) for d in data)
    if isinstance(data, dict):
        return {k: _as_tensors(v) for k, v in data.items()}
    if isinstance(data, list):
        return np.asarray(data, dtype=object if data and isinstance(data[0], str) else None)
    return data


def complete_token_inputs(x):
    """Fill in `segment_ids` (zeros) and `padding_mask` (`token_ids != 0`)."""
    token_ids = x["token_ids"]
    out = {"token_ids": token_ids}
    out["segment_ids"] = (
        x["segment_ids"] if "segment_ids" in x else ops.zeros_like(token_ids)
    )
    out["padding_mask"] = (
        x["padding_mask"] if "padding_mask" in x else ops.not_equal(token_ids, 0)
    )
    return out
