"""AdapterModel: preprocessor + backbone with named adapters, each with its task and head."""

import keras
import keras_hub
import numpy as np
import tensorflow as tf
from keras import ops

from keras_adapters.io import adapter_folder as adapter_io
from keras_adapters.backbones import bert
from keras_adapters.core import composition
from keras_adapters.core import injection
from keras_adapters.core import precision as precision_lib
from keras_adapters.io import presets
from keras_adapters.core import recipe
from keras_adapters import tasks
from keras_adapters.tasks.classification import MULTI_LABEL_REMOVED
from keras_adapters.tasks.classification import check_labels  # noqa: F401  (its 0.8 home)
from keras_adapters.tasks.base import shared_task
from keras_adapters.methods.registry import get_adapter_config
from keras_adapters.core.prefix_cache import PREFIX_DEPTH
from keras_adapters.core.prefix_cache import PREFIX_OUTPUT
from keras_adapters.models.adapter_files import AdapterFilesMixin
from keras_adapters.models.adapter_files import encoder_task
from keras_adapters.models.adapters import AdaptersMixin
from keras_adapters.models.answers import AnswersMixin
from keras_adapters.models.private_training import PrivateTrainingMixin
from keras_adapters.models.tracing import BuildFirstMixin
from keras_adapters.models.inputs import DEFAULT_NAME
from keras_adapters.models.inputs import TOKEN_INPUTS
from keras_adapters.models.inputs import as_tensors
from keras_adapters.models.inputs import checked_ids
from keras_adapters.models.inputs import complete_token_inputs



@keras.saving.register_keras_serializable(package="keras_adapters")
class AdapterModel(
    AdaptersMixin, AdapterFilesMixin, AnswersMixin, PrivateTrainingMixin, BuildFirstMixin, keras_hub.models.TextClassifier
):
    """Named adapters of any tasks on one frozen backbone.

    An *adapter* is a named unit: its method's layers inside the backbone,
    its task and its own head (`keras_adapters.tasks`). A model holds
    several, of one task or of several (a classifier, a tagger and a
    question answerer on one backbone); what runs is
    the *active* spec: a name or a composition block (`ka.Stack`,
    `ka.Parallel`, `ka.Average`, `ka.Fuse`). `fit`, `evaluate`, `predict`
    and `save_adapter` act on it. The backbone's own weights never change
    (unless an adapter is merged into them, or the method is `"full"`).

    The model owns its preprocessor, so `fit`, `evaluate` and `predict` take
    raw strings (as keras-hub tasks do); they also take dicts of
    already-tokenized `token_ids`, `segment_ids` and `padding_mask`.

    Args:
        backbone: a keras-hub BERT-style backbone (e.g. `BertBackbone`).
        num_classes: classes of the first adapter's head (`None` with
            `method=None`: no adapter yet).
        preprocessor: a keras-hub `TextClassifierPreprocessor`, or `None` to
            take token inputs only.
        method: the first adapter's method: a name (`"houlsby"`,
            `"pfeiffer"`, `"lora"`, `"ia3"`, `"full"`, `"head"`), a config
            dict or an `AdapterConfig`. It is named `"default"`, active and
            trainable. `None`: no adapter (add some with `add_adapter`).
            `adapter=` is accepted as the old spelling.
        pooling, dropout, class_names: the first adapter's head
            (see `ClassificationHead`).
        task: the first adapter's task, any registered task
            (`ka.tasks.available_tasks()`): `"text_classification"`,
            `"pair_classification"` (`fit`, `predict` and `evaluate` then take
            `(texts_a, texts_b)`), `"multi_label_classification"`,
            `"token_classification"` (`predict_entities`) or
            `"question_answering"` (`answer`).
        class_prior: the first head starts out predicting these class
            shares (the training dataset's `class_prior`; see `add_adapter`).
            Pass it for imbalanced labels, tags above all.
        preset: how the backbone was loaded (recorded in adapter folders).
        backbone_fingerprint: sha256 of the untouched backbone weights;
            computed here when not given.
        precision: an autocast precision (`"autocast_bfloat16"`) to apply to
            `backbone` before adapters are added, as `from_preset(dtype=...)`
            does; a saved model records its backbone's (a Keras policy is
            part of the backbone's own config, autocast's per-layer policies
            are not).

    Example:
    ```python
    model = AdapterModel.from_preset(
        default_preset(), num_classes=2, method="lora", sequence_length=64)
    model.fit(["good", "bad"], [1, 0], epochs=1)
    model.add_adapter("ner", "lora", task="token_classification", class_names=["O", "B-PER", "I-PER"])
    model.train_adapter("ner"); model.compile()
    ```
    """

    #: The first adapter's task when none is given.
    default_task = tasks.TEXT_CLASSIFICATION

    def __init__(
        self,
        backbone,
        num_classes=None,
        preprocessor=None,
        method="houlsby",
        pooling="cls",
        dropout=0.1,
        class_names=None,
        task=tasks.TEXT_CLASSIFICATION,
        preset=None,
        backbone_fingerprint=None,
        merged_adapter=None,
        adapters=None,
        fusions=None,
        active_adapters=None,
        trained=None,
        adapter="unset",
        class_prior=None,
        precision=None,
        **kwargs,
    ):
        if adapter != "unset":
            method = adapter
        if kwargs.pop("multi_label", False):
            raise ValueError(MULTI_LABEL_REMOVED)
        if backbone_fingerprint is None:
            backbone_fingerprint = presets.weights_fingerprint(backbone)
        precision_lib.apply_autocast(backbone, precision)
        self.backbone = backbone
        self.preprocessor = preprocessor
        self.heads = {}
        self.preset = preset
        self.backbone_fingerprint = backbone_fingerprint
        self.merged_adapter = merged_adapter
        if adapters is None:  # a new model
            adapters = []
            if method is not None:
                adapters.append(
                    {
                        "name": DEFAULT_NAME,
                        "method": get_adapter_config(method).get_config(),
                        "head": {
                            "num_classes": num_classes,
                            "pooling": pooling,
                            "dropout": dropout,
                            "class_names": class_names,
                            "task": task,
                        },
                    }
                )
                active_adapters = trained = DEFAULT_NAME
        if class_prior is not None and not adapters:
            raise ValueError("class_prior is where the first adapter's head starts; this model has no adapter.")
        for i, entry in enumerate(adapters):
            self._add(entry["name"], entry["method"], entry["head"], class_prior if i == 0 else None)
        for entry in fusions or []:
            fuse = composition.from_config(entry["fuse"])
            self._add_fusion(fuse, entry["config"], entry["head"])
        if active_adapters is not None:
            injection.set_active(backbone, composition.from_config(active_adapters))
        if isinstance(trained, dict) and "heads" in trained:
            self._apply_trained(trained)
        else:
            self._set_trained(None if trained is None else composition.from_config(trained))
        super().__init__(**kwargs)
        self.built = True  # every weight exists: backbone, units and heads

    # ------------------------------------------------------------- building
    @classmethod
    def from_preset(
        cls,
        preset,
        num_classes=None,
        method="houlsby",
        sequence_length=128,
        dtype=None,
        load_weights=True,
        adapter="unset",
        activation=None,
        **kwargs,
    ):
        """Load a backbone and its preprocessor, add an adapter and its head.

        Args:
            preset: a local folder (keras-hub format or a Hugging Face BERT
                folder) or `"default"` (the embedded all-MiniLM-L6-v2, see
                `default_preset()`). keras-hub preset names are refused:
                nothing is downloaded at run time.
            num_classes: number of classes of the first adapter.
            method: the first adapter's method (`None`: none; see class doc).
            sequence_length: tokens per example (longer texts are truncated).
            dtype: optional dtype policy for the backbone (e.g.
                `"mixed_bfloat16"`), or an autocast precision
                (`"autocast_bfloat16"`: matrix products in bf16, the rest
                in float32; `keras_adapters.core.precision`); defaults to
                Keras' global policy.
                `"auto"`: the fastest safe policy on this machine, what
                `keras-adapters train` uses (`keras_adapters.core.precision`).
            load_weights: load the pretrained weights (`False`: random init).
            activation: a Hugging Face BERT's feed-forward activation
                (default: its checkpoint's `hidden_act`; see
                `keras_adapters.BertBackbone`).
            **kwargs: other `AdapterTextClassifier` arguments. `pooling`
                defaults to the checkpoint's own (`"mean"` for
                sentence-transformers folders that average, such as the
                default MiniLM; `"cls"` otherwise).
        """
        if adapter != "unset":
            method = adapter
        if dtype == "auto":
            dtype = precision_lib.default_precision(tasks.get_task(kwargs.get("task") or cls.default_task))
        backbone = presets.load_backbone(
            preset, dtype=precision_lib.backbone_dtype(dtype), load_weights=load_weights, activation=activation
        )
        precision_lib.apply_autocast(backbone, dtype)
        preprocessor = presets.load_preprocessor(preset, sequence_length)
        if kwargs.get("pooling") in (None, "auto"):
            kwargs["pooling"] = presets.default_pooling(preset)
        return cls(
            backbone=backbone,
            num_classes=num_classes,
            preprocessor=preprocessor,
            method=method,
            preset=presets.preset_reference(preset),
            **kwargs,
        )

    @classmethod
    def from_adapter(cls, directory, preset=None, dtype=None):
        """A model with the adapter (or fusion) saved in `directory`, active.

        The backbone comes from the recorded preset, or from `preset` (it
        must be the same checkpoint; this is checked), computing what it
        computed in training (an adapter saved before 0.18 had BERT's GELU
        in keras-hub's tanh form).
        """
        config = adapter_io.read_config(directory)
        encoder_task(config, str(directory))  # a decoder's is refused before its checkpoint loads
        model = cls.from_preset(
            preset if preset is not None else config["backbone"]["preset"],
            method=None,
            sequence_length=config["task"].get("sequence_length") or 128,
            dtype=dtype,
            activation=bert.recorded_activation(config["backbone"].get("architecture")),
        )
        name = model.load_adapter(directory)
        if name in model.fusion_names:
            model.train_adapter_fusion(name)
        else:
            model.train_adapter(name)
        model.compile()
        return model

    # ------------------------------------------------------------- forward
    def call(self, inputs, training=False):
        spec = self.active_adapters
        if spec is None:
            raise ValueError(
                "No active adapter: call model.set_active_adapters(name) "
                f"(the model has {self.adapter_names})."
            )
        if "token_ids" in inputs:
            vocabulary = self.backbone.vocabulary_size
            inputs = {**inputs, "token_ids": checked_ids(inputs["token_ids"], vocabulary, "token_ids")}
        if isinstance(spec, composition.Route):
            return self._call_routed(spec, inputs, training)
        copies = len(spec) if isinstance(spec, composition.Parallel) else 1
        if PREFIX_OUTPUT in inputs:
            outputs = self._run_from_prefix(spec, inputs, training)
        else:
            if copies > 1:
                inputs = {k: ops.concatenate([v] * copies, axis=0) for k, v in inputs.items()}
            outputs = injection.run_backbone(self.backbone, inputs, training=training)
        parts = (outputs["sequence_output"], outputs["pooled_output"], inputs["padding_mask"])

        def head(name, part=(lambda t: t)):
            return self.heads[name](*[part(t) for t in parts], training=training)

        names = composition.head_names(spec)
        if isinstance(spec, composition.Parallel):
            size = ops.shape(inputs["token_ids"])[0] // copies
            return {
                name: head(name, lambda t, i=i: t[i * size : (i + 1) * size])
                for i, name in enumerate(names)
            }
        if isinstance(spec, composition.Average):
            shapes = {self.heads[n].num_classes for n in names}
            if len(shapes) != 1:
                raise ValueError(f"Average needs heads with the same number of classes, got {sorted(shapes)}.")
            return sum(w * head(n) for w, n in zip(spec.weights, names))
        return head(names)

    def _run_from_prefix(self, spec, inputs, training):
        """The backbone from cached frozen-prefix outputs (`keras_adapters.core.prefix_cache`)."""
        if isinstance(spec, composition.Parallel):
            raise ValueError("Cached frozen-prefix inputs need one active adapter (or stack/fusion), not Parallel.")
        depth = injection.frozen_prefix_depth(self.backbone)
        check = tf.debugging.assert_equal(
            tf.cast(inputs[PREFIX_DEPTH], tf.int32), depth,
            message=(
                f"These inputs hold the outputs of another number of frozen layers than the active "
                f"adapters leave frozen ({depth}); cache them again for these adapters."
            ),
        )
        with tf.control_dependencies([check]):
            hidden = tf.identity(inputs[PREFIX_OUTPUT])
        return injection.run_from(self.backbone, hidden, inputs["padding_mask"], depth, training=training)

    def _call_routed(self, spec, inputs, training):
        if training:
            raise ValueError(
                "A Route serves mixed batches; it does not train. Train each adapter with "
                "model.train_adapter(name)."
            )
        if "adapter_id" not in inputs:
            raise ValueError(
                f"With {spec!r} active, the inputs need 'adapter_id': each row's index into the "
                "Route's adapters (route.ids(names) makes it)."
            )
        task = shared_task({n: self.heads[n].task for n in spec.children})
        ids = checked_ids(inputs["adapter_id"], len(spec.children), "adapter_id")
        with injection.routing(self.backbone, ids):
            outputs = self.backbone({k: inputs[k] for k in TOKEN_INPUTS}, training=False)
        heads = [self.heads[n] for n in spec.children]
        return task.route_outputs(
            heads, ids, outputs["sequence_output"], outputs["pooled_output"], inputs["padding_mask"]
        )

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
        if isinstance(self.active_adapters, (composition.Parallel, composition.Route)):
            raise ValueError(
                "fit() trains one output; activate one adapter (model.train_adapter(name)) "
                f"instead of a {type(self.active_adapters).__name__} block."
            )
        if self.privacy is not None:
            return self._fit_privately(
                x, y, batch_size, sample_weight, validation_split, super().fit,
                validation_data=validation_data, **kwargs
            )
        self.set_privacy_report(self._trained_name(), None)  # what it said no longer holds
        if x is not None and not isinstance(x, tf.data.Dataset):
            self._check_texts(x)
            if y is not None:
                tasks.get_task(self.task).check_labels(y, x, self.num_classes, self.class_names)
            if isinstance(validation_data, (tuple, list)) and len(validation_data) > 1:
                check_labels(validation_data[1], self.num_classes, self.class_names, "validation_data")
            data = keras.utils.pack_x_y_sample_weight(x, y, sample_weight)
            num_examples = len(tf.nest.flatten(data)[0])
            if validation_split and validation_data is None:
                # Keras semantics: the last fraction, before shuffling.
                cut = int(num_examples * (1.0 - validation_split))
                validation_data = tf.nest.map_structure(lambda t: t[cut:], data)
                data = tf.nest.map_structure(lambda t: t[:cut], data)
                num_examples = cut
            ds = tf.data.Dataset.from_tensor_slices(as_tensors(data))
            if shuffle:
                ds = ds.shuffle(num_examples, reshuffle_each_iteration=True)
            if validation_data is not None and not isinstance(validation_data, tf.data.Dataset):
                validation_data = tf.data.Dataset.from_tensor_slices(
                    as_tensors(validation_data)
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

    def evaluate(self, x=None, y=None, batch_size=None, sample_weight=None, **kwargs):
        if x is not None and not isinstance(x, (tf.data.Dataset, dict)):
            self._check_texts(x)  # here, not inside tf.data's traced map
        return super().evaluate(x, y, batch_size=batch_size, sample_weight=sample_weight, **kwargs)

    def predict(self, x=None, batch_size=None, **kwargs):
        if x is not None and not isinstance(x, (tf.data.Dataset, dict)):
            self._check_texts(x)
        if isinstance(x, dict):
            self._check_id_inputs(x)
        return super().predict(x, batch_size=batch_size, **kwargs)

    def _check_id_inputs(self, x):
        """Ids outside their range, refused before anything runs (the graph's
        own assertion is dropped when XLA compiles it)."""
        limits = {"token_ids": self.backbone.vocabulary_size}
        if isinstance(self.active_adapters, composition.Route):
            limits["adapter_id"] = len(self.active_adapters.children)
        for key, count in limits.items():
            if key in x and not isinstance(x[key], tf.data.Dataset):
                values = np.asarray(x[key])
                bad = values[(values < 0) | (values >= count)]
                if bad.size:
                    raise ValueError(f"{key} must be in [0, {count}); got {bad[:5].tolist()}.")

    def preprocess_samples(self, x, y=None, sample_weight=None):
        if isinstance(x, dict) and PREFIX_OUTPUT in x:  # already past the frozen layers
            return keras.utils.pack_x_y_sample_weight(x, y, sample_weight)
        if isinstance(x, dict) and "token_ids" in x:
            return keras.utils.pack_x_y_sample_weight(complete_token_inputs(x), y, sample_weight)
        self._check_texts(x)
        return super().preprocess_samples(x, y=y, sample_weight=sample_weight)

    def _check_texts(self, x):
        """Refuse inputs of another task (pairs for a single-text head, ...)."""
        head = self._output_head()
        if head is None or (isinstance(x, dict) and ("token_ids" in x or PREFIX_OUTPUT in x)):
            return
        tasks.get_task(head.task).check_inputs(x, head.name.removesuffix("_head"))

    def compile(self, optimizer="auto", loss="auto", metrics="auto", learning_rate=None, privacy=None, **kwargs):
        """Compile with the trained adapters' defaults for anything left `"auto"`.

        Defaults: AdamW at the method's learning rate for the adapter's task
        (`tasks.defaults`: adapters ~1e-3, full fine-tuning 3e-5, a few
        measured exceptions) with weight decay 0.01 (not on biases and norms)
        and global-norm clipping at 1.0 (`recipe.make_optimizer`);
        sparse categorical cross-entropy; accuracy and macro-F1
        (`recipe.classification_metrics`).

        `privacy`: a `ka.DPConfig`: `fit` then trains with DP-SGD
        (`keras_adapters.models.private_training`); the default optimizer
        then has no global-norm clipping (each example's gradient is
        clipped instead).
        """
        if optimizer == "auto":
            clipping = {"clipnorm": None} if privacy is not None else {}
            optimizer = recipe.make_optimizer(learning_rate or self.default_learning_rate, **clipping)
        if loss == "auto":
            loss = tasks.get_task(self.task or self.default_task).loss()
        if metrics == "auto":
            several = isinstance(self.active_adapters, (composition.Parallel, composition.Route))
            single = not several and self.num_classes
            metrics = tasks.get_task(self.task).metrics(self.num_classes, self.class_names) if single else []
        if precision_lib.backbone_precision(self.backbone) == "autocast_float16" and not isinstance(
            optimizer, keras.optimizers.LossScaleOptimizer
        ):  # Keras scales the loss by itself only for a model whose policy is mixed_float16
            optimizer = keras.optimizers.LossScaleOptimizer(keras.optimizers.get(optimizer))
        self._set_privacy(privacy, optimizer)
        if privacy is not None:  # per-example lengths vary: no XLA
            kwargs.setdefault("jit_compile", False)
        keras.Model.compile(self, optimizer=optimizer, loss=loss, metrics=metrics, **kwargs)
        self._check_privacy_compiled()

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
                "method": None,
                "adapters": [
                    {"name": n, "method": c.get_config(), "head": self.heads[n].task_config()}
                    for n, c in self.state.configs.items()
                ],
                "fusions": [
                    {"fuse": f.get_config(), "config": c.get_config(), "head": self.heads[f.name].task_config()}
                    for f, c in self.state.fusions.values()
                ],
                "active_adapters": composition.to_config(self.active_adapters) if self.active_adapters else None,
                "trained": self._trained,
                "preset": self.preset,
                "backbone_fingerprint": self.backbone_fingerprint,
                "merged_adapter": self.merged_adapter,
                "precision": precision_lib.backbone_precision(self.backbone),
            }
        )
        return config


__all__ = ["AdapterModel", "TOKEN_INPUTS", "complete_token_inputs"]
