"""Named adapters on a model: adding, removing, fusing, activating, freezing.

A mixin of `AdapterModel` (as AdapterHub's `ModelAdaptersMixin`): it keeps
the adapters' state in the backbone (`core.injection`) and their heads in
`model.heads`.
"""

from keras_adapters import tasks
from keras_adapters.core import composition
from keras_adapters.core import injection
from keras_adapters.core.fusion import FusionConfig
from keras_adapters.methods.registry import get_adapter_config
from keras_adapters.models.inputs import flatten_names
from keras_adapters.models.inputs import from_head
from keras_adapters.models.inputs import make_head


class AdaptersMixin:
    """Adapters, fusions, what is active and what trains; the active head."""

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
        pooling=None, dropout=None, sequence_length=None, task=None, class_prior=None, **settings,
    ):
        """Add a named adapter with its own head (not active, not trainable).

        Args:
            name: the adapter's name.
            method: a method name, config dict or `AdapterConfig`.
            num_classes, class_names, pooling, dropout: its head;
                unset ones follow the model's first head (or the defaults).
            sequence_length: tokens per text for this task when it is served
                (`None`: the model's; see `ClassificationHead`).
            task: a registered task (`ka.tasks.available_tasks()`:
                `"text_classification"`, `"pair_classification"`,
                `"token_classification"`, `"question_answering"`,
                `"multi_label_classification"`, ...; `None`: the first head's).
            class_prior: each class's share of the training labels (the
                training dataset's `class_prior`; a multi-label head: each
                label's share of the texts). The head starts out predicting
                it, so training does not spend its first thousands of steps
                learning how rare each class is; without it adapters on
                imbalanced tags collapse to `O` (BENCHMARKS.md, tagging).
                `keras-adapters train` always passes it. `None`: uniform.
            **settings: the task's head settings (`Task.head_settings`): a
                question-answering head's `stride`, `max_answer_length`,
                `max_question_length`; a multi-label head's `thresholds`; a
                classifier's `hidden_activation` (a hidden layer before the logits).
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
        self._add(name, method, head, class_prior)
        self._reset_functions()
        return name

    def _taken(self):
        return set(self.state.configs) | set(self.state.fusions)

    def _add(self, name, method, head_config, class_prior=None):
        injection.check_name(name, self._taken())  # before the name becomes a layer name
        self.forget_privacy(name)  # a new adapter: no earlier one's private fits count for it
        head = make_head(head_config, dtype=self.backbone.dtype_policy, name=f"{name}_head")
        head.build(self.backbone.hidden_dim)
        start_from_prior(head, class_prior)  # a refused prior leaves the model as it was
        tokenizer = getattr(self.preprocessor, "tokenizer", None)
        config = get_adapter_config(method).prepare(tokenizer, int(self.backbone.vocabulary_size))
        injection.add_adapter(self.backbone, name, config)
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
                self.forget_privacy(gone)
        self._apply_trained({k: [n for n in v if n not in removed] for k, v in self._trained.items()})

    def add_adapter_fusion(self, fuse, num_classes=None, class_names=None, config=None, class_prior=None, **head):
        """Add an AdapterFusion over `fuse`'s adapters, with its own head.

        Args:
            fuse: a `ka.Fuse(...)` of bottleneck adapters the model has.
            num_classes, class_names: the fusion's head.
            config: a `FusionConfig` (or dict) for the fusion layers.
            class_prior: where the head starts (see `add_adapter`).
        """
        self._check_not_merged()
        if not isinstance(fuse, composition.Fuse):
            fuse = composition.Fuse(*fuse)
        first = self.heads[fuse.children[0]].task_config()
        # A new task: trained at the model's sequence length, not a member's.
        head_config = {**first, "class_names": class_names, "sequence_length": None, **head}
        head_config["num_classes"] = num_classes or (len(class_names) if class_names else first["num_classes"])
        config = config if isinstance(config, FusionConfig) else FusionConfig(**(config or {}))
        self._add_fusion(fuse, config.get_config(), head_config, class_prior)
        self._reset_functions()
        return fuse

    def _add_fusion(self, fuse, config, head_config, class_prior=None):
        injection.check_name(fuse.name, self._taken())
        self.forget_privacy(fuse.name)
        head = make_head(head_config, dtype=self.backbone.dtype_policy, name=f"{fuse.name}_head")
        head.build(self.backbone.hidden_dim)
        start_from_prior(head, class_prior)
        injection.add_fusion(self.backbone, fuse, FusionConfig.from_config(config))
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
                "heads": flatten_names(composition.head_names(spec)),
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
        names = flatten_names(composition.head_names(spec)) if spec is not None else list(self.heads)[:1]
        if not names:
            return None
        return self.heads[names[0]]

    @property
    def output_head(self):
        """The head whose output the model gives: the active adapter's (the
        first one's in a composition), or the first head; `None` without heads."""
        return self._output_head()

    num_classes = from_head("num_classes")
    class_names = from_head("class_names")
    pooling = from_head("pooling")
    task = from_head("task")

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
        return min(tasks.learning_rate(self.heads[n].task, self.state.configs[n]) for n in names)


def start_from_prior(head, class_prior):
    """A new head's bias from `class_prior` (`None`: left at zero)."""
    if class_prior is None:
        return
    if not hasattr(head, "start_from_prior"):
        raise ValueError(f"class_prior is for classification and tagging heads; a {head.task} head has no classes.")
    head.start_from_prior(class_prior)
