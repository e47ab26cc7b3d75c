"""AdapterModel: preprocessor + backbone with named adapters, each with its task and head."""

import keras
import keras_hub
import numpy as np
import tensorflow as tf
from keras import ops

from keras_adapters.io import adapter_folder as adapter_io
from keras_adapters.core import composition
from keras_adapters.core import injection
from keras_adapters.core import precision
from keras_adapters.io import presets
from keras_adapters.core import recipe
from keras_adapters import tasks
from keras_adapters.tasks import question_answering
from keras_adapters.tasks import token_classification
from keras_adapters.core.fusion import FusionConfig
from keras_adapters.tasks.classification import MULTI_LABEL_REMOVED
from keras_adapters.tasks.classification import check_labels  # noqa: F401  (its 0.8 home)
from keras_adapters.tasks.classification import routed_probabilities
from keras_adapters.methods.baselines import HeadOnlyConfig
from keras_adapters.methods.registry import get_adapter_config
from keras_adapters.core.prefix_cache import PREFIX_DEPTH
from keras_adapters.core.prefix_cache import PREFIX_OUTPUT

TOKEN_INPUTS = ("token_ids", "segment_ids", "padding_mask")
DEFAULT_NAME = "default"


def _from_head(attribute, default=None):
    """A property read from the head that gives the model's output."""
    return property(
        lambda self: getattr(self._output_head(), attribute, default),
        doc=f"The output head's `{attribute}` (`{default}` without a head).",
    )


@keras.saving.register_keras_serializable(package="keras_adapters")
class AdapterModel(keras_hub.models.TextClassifier):
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
        preset: how the backbone was loaded (recorded in adapter folders).
        backbone_fingerprint: sha256 of the untouched backbone weights;
            computed here when not given.

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
        **kwargs,
    ):
        if adapter != "unset":
            method = adapter
        if kwargs.pop("multi_label", False):
            raise ValueError(MULTI_LABEL_REMOVED)
        if backbone_fingerprint is None:
            backbone_fingerprint = presets.weights_fingerprint(backbone)
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
        for entry in adapters:
            self._add(entry["name"], entry["method"], entry["head"])
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
                `"mixed_bfloat16"`); defaults to Keras' global policy.
                `"auto"`: the fastest safe policy on this machine, what
                `keras-adapters train` uses (`keras_adapters.core.precision`).
            load_weights: load the pretrained weights (`False`: random init).
            **kwargs: other `AdapterTextClassifier` arguments. `pooling`
                defaults to the checkpoint's own (`"mean"` for
                sentence-transformers folders that average, such as the
                default MiniLM; `"cls"` otherwise).
        """
        if adapter != "unset":
            method = adapter
        if dtype == "auto":
            dtype = precision.default_precision(tasks.get_task(kwargs.get("task") or cls.default_task))
        backbone = presets.load_backbone(preset, dtype=dtype, load_weights=load_weights)
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
        must be the same checkpoint; this is checked).
        """
        config = adapter_io.read_config(directory)
        model = cls.from_preset(
            preset if preset is not None else config["backbone"]["preset"],
            method=None,
            sequence_length=config["task"].get("sequence_length") or 128,
            dtype=dtype,
        )
        name = model.load_adapter(directory)
        if name in model.fusion_names:
            model.train_adapter_fusion(name)
        else:
            model.train_adapter(name)
        model.compile()
        return model

    # ------------------------------------------------------------ adapters
    @property
    def state(self):
        return injection.get_state(self.backbone, create=True)

    @property
    def adapter_names(self):
        """The adapters' names, in the order added."""
        return list(self.state.configs)

    @property
    def fusion_names(self):
        return list(self.state.fusions)

    @property
    def active_adapters(self):
        """The active spec: a name, a composition block, or `None`."""
        return self.state.active

    def adapter_config(self, name=None):
        """The `AdapterConfig` of adapter `name` (default: the active one)."""
        name = self._single_name(name)
        return self.state.configs[name]

    def _single_name(self, name=None):
        if name is not None:
            if name not in self.state.configs:
                raise ValueError(f"No adapter named {name!r}; the model has {self.adapter_names}.")
            return name
        active = self.active_adapters
        if not isinstance(active, str):
            raise ValueError(f"The active adapters are {active!r}; name one adapter.")
        return active

    def add_adapter(
        self, name, method="houlsby", num_classes=None, class_names=None,
        pooling=None, dropout=None, sequence_length=None, task=None, **settings,
    ):
        """Add a named adapter with its own head (not active, not trainable).

        Args:
            name: the adapter's name.
            method: a method name, config dict or `AdapterConfig`.
            num_classes, class_names, pooling, dropout: its head;
                unset ones follow the model's first head (or the defaults).
            sequence_length: tokens per text for this task when it is served
                (`None`: the model's; see `ClassificationHead`).
            task: `"text_classification"`, `"pair_classification"` or
                `"token_classification"` or `"question_answering"` (`None`:
                the first head's).
            **settings: a question-answering head's `stride`,
                `max_answer_length`, `max_question_length`.
        """
        self._check_not_merged()
        first = next(iter(self.heads.values()), None)
        base = first.task_config() if first is not None else {"pooling": "cls", "dropout": 0.1}
        task = tasks.get_task(base.get("task", tasks.TEXT_CLASSIFICATION) if task is None else task)
        given = {"num_classes": num_classes, "class_names": class_names, "pooling": pooling,
                 "dropout": dropout, "sequence_length": sequence_length}
        head = task.new_head_record(base, given, settings)
        if head["num_classes"] is None:
            raise ValueError(f"Adapter {name!r} needs num_classes (the model has no other head to copy).")
        self._add(name, method, head)
        self._reset_functions()
        return name

    def _taken(self):
        return set(self.state.configs) | set(self.state.fusions)

    def _add(self, name, method, head_config):
        injection.check_name(name, self._taken())  # before the name becomes a layer name
        head = _make_head(head_config, dtype=self.backbone.dtype_policy, name=f"{name}_head")
        tokenizer = getattr(self.preprocessor, "tokenizer", None)
        config = get_adapter_config(method).prepare(tokenizer, int(self.backbone.vocabulary_size))
        injection.add_adapter(self.backbone, name, config)
        head.build(self.backbone.hidden_dim)
        for w in head.weights:
            w.trainable = False
        with injection.unlocked(self):
            self.heads[name] = head

    def delete_adapter(self, name):
        """Remove an adapter, its head, and any fusion over it; what else
        was training keeps training."""
        removed = {name} | {f.name for f, _ in self.state.fusions.values() if name in f.children}
        injection.delete_adapter(self.backbone, name)
        with injection.unlocked(self):
            for gone in removed:
                self.heads.pop(gone)
        self._apply_trained({k: [n for n in v if n not in removed] for k, v in self._trained.items()})

    def add_adapter_fusion(self, fuse, num_classes=None, class_names=None, config=None, **head):
        """Add an AdapterFusion over `fuse`'s adapters, with its own head.

        Args:
            fuse: a `ka.Fuse(...)` of bottleneck adapters the model has.
            num_classes, class_names: the fusion's head.
            config: a `FusionConfig` (or dict) for the fusion layers.
        """
        self._check_not_merged()
        if not isinstance(fuse, composition.Fuse):
            fuse = composition.Fuse(*fuse)
        first = self.heads[fuse.children[0]].task_config()
        # A new task: trained at the model's sequence length, not a member's.
        head_config = {**first, "class_names": class_names, "sequence_length": None, **head}
        head_config["num_classes"] = num_classes or (len(class_names) if class_names else first["num_classes"])
        config = config if isinstance(config, FusionConfig) else FusionConfig(**(config or {}))
        self._add_fusion(fuse, config.get_config(), head_config)
        self._reset_functions()
        return fuse

    def _add_fusion(self, fuse, config, head_config):
        injection.check_name(fuse.name, self._taken())
        head = _make_head(head_config, dtype=self.backbone.dtype_policy, name=f"{fuse.name}_head")
        injection.add_fusion(self.backbone, fuse, FusionConfig.from_config(config))
        head.build(self.backbone.hidden_dim)
        for w in head.weights:
            w.trainable = False
        with injection.unlocked(self):
            self.heads[fuse.name] = head

    def fusion(self, name):
        """The `ka.Fuse` block of the AdapterFusion named `name`."""
        return self.state.fusions[name][0]

    def set_active_adapters(self, spec):
        """Make `spec` (a name or a composition block) what the model runs."""
        spec = injection.set_active(self.backbone, spec)
        self._reset_functions()
        return spec

    def train_adapter(self, spec):
        """Activate `spec` and let only its adapters and output head(s) train.

        Everything else is frozen: the backbone, other adapters, other heads
        and fusions. Compile after it, as after any change of what trains.
        """
        spec = self.set_active_adapters(spec)
        if composition.fusions(spec):
            raise ValueError(f"{spec!r} contains a fusion; train it with model.train_adapter_fusion(...).")
        self._set_trained(spec)
        return spec

    def train_adapter_fusion(self, fuse):
        """Activate `fuse` and let only its fusion layers and head train."""
        if isinstance(fuse, str):
            fuse = self.fusion(fuse)
        spec = self.set_active_adapters(fuse)
        self._set_trained(spec)
        return spec

    def _set_trained(self, spec):
        """Freeze everything but what training `spec` moves (see train_adapter)."""
        if spec is None:
            trained = {"adapters": [], "fusions": [], "heads": []}
        else:
            spec = composition.parse(spec)
            fusions = [f.name for f in composition.fusions(spec)]
            trained = {
                "adapters": [] if fusions else composition.adapter_names(spec),
                "fusions": fusions,
                "heads": _flatten(composition.head_names(spec)),
            }
        self._apply_trained(trained)

    def _apply_trained(self, trained):
        injection.set_trainable(self.backbone, trained["adapters"], trained["fusions"])
        for name, head in self.heads.items():
            for w in head.weights:
                w.trainable = name in trained["heads"]
        self._trained = trained
        self._reset_functions()

    def _reset_functions(self):
        # Traced train/predict functions captured the previous adapters.
        self.train_function = self.test_function = self.predict_function = None

    def _check_not_merged(self):
        if self.merged_adapter is not None:
            raise ValueError(
                "This model's backbone has an adapter merged into its weights, so other adapters "
                "would not see the checkpoint they were trained on; load a fresh model."
            )

    # -------------------------------------------------------- active head
    def _output_head(self):
        spec = self.active_adapters
        names = _flatten(composition.head_names(spec)) if spec is not None else list(self.heads)[:1]
        if not names:
            return None
        return self.heads[names[0]]

    @property
    def output_head(self):
        """The head whose output the model gives: the active adapter's (the
        first one's in a composition), or the first head; `None` without heads."""
        return self._output_head()

    num_classes = _from_head("num_classes")
    class_names = _from_head("class_names")
    pooling = _from_head("pooling")
    task = _from_head("task")

    @property
    def sequence_length(self):
        return None if self.preprocessor is None else self.preprocessor.sequence_length

    @property
    def default_learning_rate(self):
        trained = self._trained
        if trained["fusions"]:
            return self.state.fusions[trained["fusions"][0]][1].learning_rate
        names = trained["adapters"] or ([self.active_adapters] if isinstance(self.active_adapters, str) else [])
        if not names:
            return 1e-3
        return min(self.state.configs[n].default_learning_rate for n in names)

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
        other = [n for n in spec.children if not tasks.get_task(self.heads[n].task).routable]
        if other:
            raise ValueError(
                f"A Route serves single-text classification adapters in one batch; {other} do "
                f"{sorted({self.heads[n].task for n in other})}: activate them on their own."
            )
        ids = checked_ids(inputs["adapter_id"], len(spec.children), "adapter_id")
        with injection.routing(self.backbone, ids):
            outputs = self.backbone({k: inputs[k] for k in TOKEN_INPUTS}, training=False)
        heads = [self.heads[n] for n in spec.children]
        return routed_probabilities(
            heads, ids, outputs["sequence_output"], outputs["pooled_output"], inputs["padding_mask"]
        )

    # --------------------------------------------------------- adapter folders
    def save_adapter(self, directory, name=None):
        """Write one adapter (or fusion) with its head to a small folder.

        The folder holds `adapter_config.json` and `adapter_model.safetensors`
        (see `keras_adapters.io.adapter_folder`); never a copy of the frozen
        backbone. A fusion's folder also holds its adapters' folders.

        Args:
            name: the adapter or fusion (default: the active one).
        """
        if name is None:
            active = self.active_adapters
            name = active.name if isinstance(active, composition.Fuse) else self._single_name()
        if self.merged_adapter is not None:
            raise adapter_io.AdapterFormatError(
                "This model's adapter was merged into the backbone; save it with "
                "model.save('model.keras') or export it instead."
            )
        # All at once: a save killed half-way leaves the previous folder whole.
        return adapter_io.replace_folder(directory, lambda tmp: self._write_adapter(tmp, name))

    def _write_adapter(self, directory, name):
        head = self.heads[name]
        tensors = {k: w.numpy() for k, w in head.weights_by_key().items()}
        config = {
            "name": name,
            "backbone": {
                "preset": self.preset,
                "architecture": presets.architecture_config(self.backbone),
                "weights_sha256": self.backbone_fingerprint,
                "tokenizer": presets.tokenizer_config(getattr(self.preprocessor, "tokenizer", None)),
            },
            "task": {
                **{k: v for k, v in head.task_config().items() if k != "task"},
                "type": head.task,
                "sequence_length": head.sequence_length or self.sequence_length,
            },
        }
        if name in self.state.fusions:
            fuse, fusion_config = self.state.fusions[name]
            config["fusion"] = {"adapters": list(fuse.children), "config": fusion_config.get_config()}
            weights = injection.fusion_weights_by_key(self.backbone, name)
            for member in fuse.children:
                self._write_adapter(f"{directory}/{adapter_io.MEMBERS_DIR}/{member}", member)
        else:
            self._single_name(name)
            config["method"] = self.state.configs[name].as_saved().get_config()
            weights = injection.adapter_weights_by_key(self.backbone, name)
        tensors.update({k: w.numpy() for k, w in weights.items()})
        return adapter_io.write_folder(directory, config, tensors)

    def load_adapter(self, directory, name=None):
        """Add the adapter (or fusion) saved in `directory` to this model.

        Checks the file's sha256, that it was trained on this model's
        backbone checkpoint, and every tensor's name and shape. A fusion's
        adapters are loaded from its folder unless the model has them.

        Args:
            name: the name to give it (default: the saved name, or
                `"default"` for folders written by keras-adapters 0.1).

        Returns:
            The name it was added under (not activated).
        """
        self._check_not_merged()
        source = str(directory)
        config, tensors = adapter_io.read_folder(directory)
        task = tasks.get_task(adapter_io.task_type(config, source, tasks.available_tasks()))
        adapter_io.warn_unknown_keys(config, source, task.head_settings)
        adapter_io.check_backbone(
            config, presets.architecture_config(self.backbone), self.backbone_fingerprint, source
        )
        adapter_io.check_tokenizer(
            config, presets.tokenizer_config(getattr(self.preprocessor, "tokenizer", None)), source
        )
        name = name or config.get("name") or DEFAULT_NAME
        if config["task"].get("multi_label"):
            raise adapter_io.AdapterFormatError(f"{source}: {MULTI_LABEL_REMOVED}")
        head_config = {k: config["task"].get(k) for k in ("num_classes", "class_names", "pooling", "dropout")}
        head_config["sequence_length"] = config["task"].get("sequence_length")
        head_config["task"] = task.name
        head_config.update({k: config["task"][k] for k in task.head_settings if k in config["task"]})
        if "fusion" in config:
            members = config["fusion"]["adapters"]
            for member in members:
                if member not in self.state.configs:
                    self.load_adapter(f"{directory}/{adapter_io.MEMBERS_DIR}/{member}", name=member)
            fuse = composition.Fuse(*members, name=name)
            self._add_fusion(fuse, config["fusion"].get("config", {}), head_config)
            weights = injection.fusion_weights_by_key(self.backbone, name)
        else:
            self._add(name, adapter_io.method_config(config, source), head_config)
            weights = injection.adapter_weights_by_key(self.backbone, name)
        weights.update(self.heads[name].weights_by_key())
        try:
            adapter_io.check_tensors({k: w.shape for k, w in weights.items()}, tensors, source)
        except adapter_io.AdapterFormatError:
            if name in self.state.configs:
                self.delete_adapter(name)
            else:
                self._drop_fusion(name)
            raise
        for key, variable in weights.items():
            variable.assign(tensors[key].astype(variable.dtype))
        self._reset_functions()
        return name

    def _drop_fusion(self, name):
        injection.delete_fusion(self.backbone, name)
        with injection.unlocked(self):
            self.heads.pop(name)

    def merge_adapter(self, name=None):
        """Fold a LoRA or (IA)^3 adapter into the backbone weights, in place.

        The outputs stay the same (up to float rounding) and no adapter layers
        are left, so the model runs at the plain backbone's speed. The
        adapter keeps its name and head (as a `"head"` adapter). Bottleneck
        adapters cannot be merged; nor can one adapter among several (the
        others would see a changed backbone). Returns the model.
        """
        name = self._single_name(name)
        merged = injection.merge_adapter(self.backbone, name)
        injection.add_adapter(self.backbone, name, HeadOnlyConfig())
        injection.set_active(self.backbone, name)
        self.merged_adapter = merged.get_config()
        self._set_trained(name)
        if self.compiled:
            # The optimizer's state belonged to the removed adapter weights.
            self.compile_from_config(self.get_compile_config())
        return self

    # ------------------------------------------------ answers for people
    def predict_entities(self, texts, batch_size=32):
        """The entities the active tagging adapter finds in each text (see
        `tasks.token_classification.predict_entities`)."""
        self._check_task("token_classification", "predict_entities")
        return token_classification.predict_entities(self, texts, batch_size)

    def answer(self, question, context, batch_size=32, max_answer_length=None):
        """The best answer to each question in its context, from the active
        question-answering adapter.

        Args:
            question, context: a string each, or two equally long lists.
            max_answer_length: the longest answer in tokens (default: the
                head's, 30).

        Returns:
            `{"answer", "start", "end", "score"}` (a list of them for lists):
            `context[start:end] == answer` (character offsets), `score` the
            span's start x end probability. A context without a word gives
            an empty answer with score 0.
        """
        self._check_task("question_answering", "answer")
        single = isinstance(question, str)
        questions, contexts = ([question], [context]) if single else (list(question), list(context))
        if single != isinstance(context, str) or len(questions) != len(contexts):
            raise ValueError("Pass one question and one context, or two equally long lists of them.")
        if not questions:
            return []
        examples = [{"question": str(q), "context": str(c), "answers": []} for q, c in zip(questions, contexts)]
        found = self.answer_examples(examples, batch_size, max_answer_length)
        return found[0] if single else found

    def answer_examples(self, examples, batch_size=32, max_answer_length=None):
        """`answer` for `read_squad` examples, in their order."""
        self._check_task("question_answering", "answer_examples")
        return question_answering.answer_examples(self, examples, batch_size, max_answer_length)

    def windows(self):
        """The `QuestionWindows` the active question-answering head was trained with."""
        return question_answering.windows(self)

    def _check_task(self, task, method):
        if self.task != task:
            raise ValueError(
                f"{method}() needs an active {tasks.cli_name(task)} adapter; the active adapter "
                f"{self.active_adapters!r} does {self.task and tasks.cli_name(self.task)}."
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
            ds = tf.data.Dataset.from_tensor_slices(_as_tensors(data))
            if shuffle:
                ds = ds.shuffle(num_examples, reshuffle_each_iteration=True)
            if validation_data is not None and not isinstance(validation_data, tf.data.Dataset):
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

    def compile(self, optimizer="auto", loss="auto", metrics="auto", learning_rate=None, **kwargs):
        """Compile with the trained adapters' defaults for anything left `"auto"`.

        Defaults: AdamW at the method's learning rate (adapters ~1e-3, full
        fine-tuning 3e-5) with weight decay 0.01 (not on biases and norms)
        and global-norm clipping at 1.0 (`recipe.make_optimizer`);
        sparse categorical cross-entropy; accuracy and macro-F1
        (`recipe.classification_metrics`).
        """
        if optimizer == "auto":
            optimizer = recipe.make_optimizer(learning_rate or self.default_learning_rate)
        if loss == "auto":
            loss = tasks.get_task(self.task or self.default_task).loss()
        if metrics == "auto":
            several = isinstance(self.active_adapters, (composition.Parallel, composition.Route))
            single = not several and self.num_classes
            metrics = tasks.get_task(self.task).metrics(self.num_classes, self.class_names) if single else []
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
            }
        )
        return config


def _make_head(record, **layer_kwargs):
    return tasks.get_task(record.get("task") or tasks.TEXT_CLASSIFICATION).make_head(record, **layer_kwargs)


def _flatten(names):
    return [names] if isinstance(names, str) else [n for x in names for n in _flatten(x)]


def _as_tensors(data):
    """Lists of strings and numbers -> arrays `from_tensor_slices` takes."""
    if isinstance(data, tuple):
        return tuple(_as_tensors(d) for d in data)
    if isinstance(data, dict):
        return {k: _as_tensors(v) for k, v in data.items()}
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


__all__ = ["AdapterModel", "TOKEN_INPUTS", "complete_token_inputs"]
