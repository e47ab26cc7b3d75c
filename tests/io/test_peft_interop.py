"""Adapters trained with peft in PyTorch predict the same here (the `torch-parity`
extra: torch, transformers, peft; skipped without them)."""

import keras
import numpy as np
import pytest

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

import keras_adapters as ka  # noqa: E402
from adapterhub_side import TEST  # noqa: E402  (the same texts both interop tests use)
from adapterhub_side import TRAIN  # noqa: E402
from keras_adapters.methods.base import PROJECTION_SITES  # noqa: E402

ALL_LINEAR = r".*encoder.*\.(query|key|value|dense)$"  # every encoder projection, not the pooler

CONFIGS = {
    "lora_query_value": lambda: peft.LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"], task_type="SEQ_CLS"),
    "rslora_dora_all": lambda: peft.LoraConfig(
        r=8, lora_alpha=16, use_rslora=True, use_dora=True, target_modules=ALL_LINEAR, task_type="SEQ_CLS"
    ),
    "lora_some_layers": lambda: peft.LoraConfig(
        r=2, lora_alpha=4, target_modules=["key", "intermediate.dense"], layers_to_transform=[0, 2, 5], task_type="SEQ_CLS"
    ),
    "lora_rank_alpha_patterns": lambda: peft.LoraConfig(
        r=4, lora_alpha=8, target_modules=["query", "value", "output.dense"], task_type="SEQ_CLS",
        rank_pattern={"layer.1.attention.self.query": 2, r"layer\.[34]\..*value": 8}, alpha_pattern={"output.dense": 2},
    ),
    "all_linear_dora": lambda: peft.LoraConfig(r=4, lora_alpha=8, use_dora=True, target_modules="all-linear", task_type="SEQ_CLS"),
    "pooler_saved": lambda: peft.LoraConfig(r=4, lora_alpha=8, target_modules=["value"], modules_to_save=["pooler"], task_type="SEQ_CLS"),
    "prompt_tuning": lambda: peft.PromptTuningConfig(num_virtual_tokens=6, task_type="SEQ_CLS"),
    "ia3_default": lambda: peft.IA3Config(task_type="SEQ_CLS"),
    "ia3_query_intermediate": lambda: peft.IA3Config(
        target_modules=["query", "intermediate.dense"], feedforward_modules=["intermediate.dense"], task_type="SEQ_CLS"
    ),
}


def _train_in_pytorch(preset, config, folder, steps=8):
    """A few AdamW steps (the weights move off their initial values), then peft's save."""
    torch.manual_seed(0)
    tokenizer = transformers.AutoTokenizer.from_pretrained(preset)
    base = transformers.AutoModelForSequenceClassification.from_pretrained(preset, num_labels=3)
    model = peft.get_peft_model(base, config)
    batch = tokenizer([t for t, _ in TRAIN], padding=True, return_tensors="pt")
    labels = torch.tensor([y for _, y in TRAIN])
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-2)
    model.train()
    for _ in range(steps):
        optimizer.zero_grad()
        model(**batch, labels=labels).loss.backward()
        optimizer.step()
    model.eval()
    model.save_pretrained(folder)
    with torch.no_grad():
        test = tokenizer(TEST, padding=True, return_tensors="pt")
        return torch.softmax(model(**test).logits, -1).numpy()


@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_a_peft_adapter_trained_in_pytorch_predicts_the_same(minilm_preset, tmp_path, kind):
    expected = _train_in_pytorch(minilm_preset, CONFIGS[kind](), tmp_path / "peft")
    assert np.abs(expected - 1 / 3).max() > 0.05  # training moved the classifier off chance
    model = ka.AdapterModel.from_preset(minilm_preset, method=None, sequence_length=32)
    model.set_active_adapters(model.load_adapter(tmp_path / "peft"))
    np.testing.assert_allclose(model.predict(TEST, verbose=0), expected, atol=1e-4)


OURS = {
    "lora": lambda: ka.LoRAConfig(rank=4, alpha=8, target_modules=("query", "value")),
    "rslora_dora_some_layers": lambda: ka.LoRAConfig(
        rank=8, alpha=16, use_rslora=True, use_dora=True, target_layers="transformer_layer_[135]"
    ),
    "lora_rank_alpha_patterns": lambda: ka.LoRAConfig(
        rank=4, alpha=8, target_modules=("query", "value", "feedforward_output_dense"),
        rank_pattern={"transformer_layer_2/query": 2, "value": 6}, alpha_pattern={"feedforward_output_dense": 2},
    ),
    "prompt_before_cls": lambda: ka.PromptConfig(num_virtual_tokens=4, placement="before_cls"),
    "ia3": lambda: ka.IA3Config(),
    "lora_own_pooler": lambda: ka.LoRAConfig(rank=2, alpha=4, target_modules=("value",)),
    "ia3_every_projection": lambda: ka.IA3Config(
        target_modules=PROJECTION_SITES, feedforward_modules=("attention_output", "feedforward_output_dense")
    ),
}


def _pytorch_probabilities(preset, folder, num_labels=3):
    tokenizer = transformers.AutoTokenizer.from_pretrained(preset)
    base = transformers.AutoModelForSequenceClassification.from_pretrained(preset, num_labels=num_labels)
    model = peft.PeftModel.from_pretrained(base, str(folder)).eval()
    with torch.no_grad():
        return torch.softmax(model(**tokenizer(TEST, padding=True, return_tensors="pt")).logits, -1).numpy()


@pytest.mark.parametrize("kind", sorted(OURS))
def test_our_adapter_written_as_a_peft_folder_predicts_the_same_in_pytorch(minilm_preset, tmp_path, kind):
    from keras_adapters.runs import conversion

    head = {"pooling": "cls_token", "hidden_activation": "tanh"} if kind == "lora_own_pooler" else {"pooling": "cls"}
    model = ka.AdapterTextClassifier.from_preset(minilm_preset, method=None, sequence_length=32)
    model.add_adapter("default", OURS[kind](), num_classes=3, **head)
    model.train_adapter("default")
    if kind == "lora_own_pooler":  # the head's layer starts as BERT's pooler, as peft's saved copy does
        model.heads["default"].hidden.set_weights(model.backbone.pooled_dense.get_weights())
    model.compile(optimizer=keras.optimizers.Adam(3e-2))
    model.fit([t for t, _ in TRAIN], np.array([y for _, y in TRAIN]), epochs=4, batch_size=6, verbose=0)
    expected = model.predict(TEST, verbose=0)
    assert np.abs(expected - 1 / 3).max() > 0.05
    model.save_adapter(tmp_path / "ours")
    conversion.to_peft(tmp_path / "ours", tmp_path / "peft")
    np.testing.assert_allclose(_pytorch_probabilities(minilm_preset, tmp_path / "peft"), expected, atol=1e-4)


@pytest.mark.parametrize("kind", ["rslora_dora_all", "lora_rank_alpha_patterns"])
def test_a_peft_folder_converted_here_and_back_keeps_every_tensor(minilm_preset, tmp_path, kind):
    from safetensors.numpy import load_file

    from keras_adapters.runs import conversion

    expected = _train_in_pytorch(minilm_preset, CONFIGS[kind](), tmp_path / "peft")
    conversion.convert(tmp_path / "peft", tmp_path / "ours", preset=minilm_preset)
    conversion.to_peft(tmp_path / "ours", tmp_path / "back")
    before, after = (load_file(str(tmp_path / d / "adapter_model.safetensors")) for d in ("peft", "back"))
    assert sorted(before) == sorted(after)
    for key in before:
        np.testing.assert_array_equal(after[key], before[key])
    np.testing.assert_allclose(_pytorch_probabilities(minilm_preset, tmp_path / "back"), expected, atol=1e-5)
