"""Saving an adapter (or fusion) to its folder, loading one, merging one.

A mixin of `AdapterModel`; the folder format itself is `io.adapter_folder`'s.
"""

from keras_adapters import tasks
from keras_adapters.core import composition
from keras_adapters.core import injection
from keras_adapters.io import adapter_folder as adapter_io
from keras_adapters.io import adapterhub_format
from keras_adapters.io import peft_format
from keras_adapters.io import presets
from keras_adapters.methods.baselines import HeadOnlyConfig
from keras_adapters.tasks.classification import MULTI_LABEL_REMOVED
from keras_adapters.models.inputs import DEFAULT_NAME


class AdapterFilesMixin:
    """`save_adapter`, `load_adapter`, `merge_adapter`."""

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
        if self.privacy_report(name):
            config["privacy"] = self.privacy_report(name)
        return adapter_io.write_folder(directory, config, tensors)

    def load_adapter(self, directory, name=None):
        """Add the adapter (or fusion) saved in `directory` to this model.

        Checks the file's sha256, that it was trained on this model's
        backbone checkpoint, and every tensor's name and shape. A fusion's
        adapters are loaded from its folder unless the model has them.

        A Hugging Face peft folder (`adapter_config.json` with `peft_type`:
        LoRA, rsLoRA, DoRA, IA3 of a BERT sequence classifier) loads too,
        with its classifier as the head (`keras_adapters.io.peft_format`),
        and so does an AdapterHub folder (bottleneck adapters with their
        classification head, `keras_adapters.io.adapterhub_format`). They
        record no checkpoint fingerprint, so the backbone must be the one
        they were trained on (shapes are checked).

        Args:
            name: the name to give it (default: the saved name, or
                `"default"` for folders written by keras-adapters 0.1
                and for peft folders; AdapterHub's own name).

        Returns:
            The name it was added under (not activated).
        """
        self._check_not_merged()
        source = str(directory)
        config, tensors_for = self._read_adapter_source(directory)
        task = tasks.get_task(adapter_io.task_type(config, source, tasks.available_tasks()))
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
            shapes = {k: tuple(w.shape) for k, w in weights.items()}
            tensors = tensors_for(shapes)
            adapter_io.check_tensors(shapes, tensors, source)
        except adapter_io.AdapterFormatError:
            if name in self.state.configs:
                self.delete_adapter(name)
            else:
                self._drop_fusion(name)
            raise
        for key, variable in weights.items():
            variable.assign(tensors[key].astype(variable.dtype))
        self.set_privacy_report(name, config.get("privacy"))
        self._reset_functions()
        return name

    def _base_pooler(self):
        """BERT's pooler weights `(kernel, bias)`, which a peft adapter of the pooler updates."""
        pooler = getattr(self.backbone, "pooled_dense", None)
        if pooler is None:
            raise adapter_io.AdapterFormatError(
                f"The adapter changes BERT's pooler, and this {type(self.backbone).__name__} has none (pooled_dense)."
            )
        return pooler.kernel.numpy(), pooler.bias.numpy()

    def _read_adapter_source(self, directory):
        """(config, tensors for the expected shapes) of our folder or a peft one."""
        source = str(directory)
        if peft_format.is_peft_folder(directory):
            types = tasks.peft_task_types()
            kind = types.get(peft_format.PeftFolder.task_type_of(directory))
            if kind is not None:
                refuse_decoder_task(tasks.get_task(kind), source)
            encoder_types = {t: n for t, n in types.items() if not tasks.get_task(n).decoder}
            peft = peft_format.PeftFolder(directory, encoder_types, base_pooler=self._base_pooler)
            return peft.config, peft.tensors
        if adapterhub_format.is_adapterhub_folder(directory):
            hub = adapterhub_format.AdapterHubFolder(directory, tasks.adapterhub_head_types())
            return hub.config, hub.tensors
        config, tensors = adapter_io.read_folder(directory)
        task = encoder_task(config, source)
        adapter_io.warn_unknown_keys(config, source, task.head_settings)
        adapter_io.check_backbone(config, presets.architecture_config(self.backbone), self.backbone_fingerprint, source)
        adapter_io.check_tokenizer(config, presets.tokenizer_config(getattr(self.preprocessor, "tokenizer", None)), source)
        return config, lambda shapes: tensors

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



def refuse_decoder_task(task, source):
    """Refuse a decoder's adapter (`task.decoder`): it lives in `AdapterCausalLM`."""
    if task.decoder:
        raise adapter_io.AdapterFormatError(
            f"{source} holds a {task.cli_name} adapter of a decoder: load it with "
            "keras_adapters.AdapterCausalLM.from_adapter (AdapterModel holds encoder tasks' adapters)."
        )


def encoder_task(config, source):
    """The task of one of our folders (its JSON `config`), refused when a decoder's."""
    task = tasks.get_task(adapter_io.task_type(config, source, tasks.available_tasks()))
    refuse_decoder_task(task, source)
    return task
