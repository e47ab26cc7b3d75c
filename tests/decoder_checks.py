"""What the decoder families' tests share: an adapter's weights made nonzero,
the logits of whole rows, greedy decoding by full forwards of a reference
model (what the cached loop must reproduce), left-padded batches checked
against it, a unit's layer and site."""

import numpy as np

from keras_adapters.core import injection
from keras_adapters.methods.lora import LoRAConfig
from keras_adapters.methods.prefix import PrefixConfig
from keras_adapters.methods.prompt import PromptConfig

ALL_LINEAR = ("query", "key", "value", "attention_output", "feedforward_gate_dense",
              "feedforward_intermediate_dense", "feedforward_output_dense")
#: The methods a left-padded batch is decoded with (`assert_left_padded_decoding`).
LEFT_PADDING_METHODS = ("lora", "prompt", "prefix")


def left_padding_config(method, lora_modules=ALL_LINEAR):
    """The adapter config of one of `LEFT_PADDING_METHODS` (LoRA on `lora_modules`)."""
    return {"lora": lambda: LoRAConfig(rank=2, target_modules=lora_modules),
            "prompt": lambda: PromptConfig(num_virtual_tokens=2, init="random"),
            "prefix": lambda: PrefixConfig(prefix_length=2, reparameterize=False)}[method]()


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


def prefix_past(model, name="default"):
    """A prefix adapter's keys and values `[layers, 2, ...]` in float64, as references take them."""
    weights = injection.adapter_weights_by_key(model.backbone, name)
    keys, values = (weights[f"embeddings/embedding_output/{k}"].numpy() for k in ("keys", "values"))
    return np.stack([keys, values], axis=1).astype(np.float64)


def assert_left_padded_decoding(model, method, reference, lora_reference, prompts, steps):
    """Rows of `prompts` (different lengths: the shorter padded on the left)
    decode in one batch what `reference` decodes for each alone by full
    forwards; `method` one of `LEFT_PADDING_METHODS`, the model's adapter
    with nonzero weights, `lora_reference(model)` the reference carrying its LoRA.
    Rows reading another row's positions or padding would decode otherwise."""
    kwargs = {}
    if method == "lora":
        reference = lora_reference(model)
    elif method == "prompt":
        vectors = next(iter(injection.adapter_weights_by_key(model.backbone, "default").values()))
        kwargs["virtual"] = vectors.numpy().astype(np.float64)
    else:
        kwargs["past"] = prefix_past(model)
    texts = model.generate(prompts, max_new_tokens=steps, stop_token_ids=None)
    expected = [greedy_by_full_forwards(reference, model._prompt_ids(p), steps, **kwargs) for p in prompts]
    assert [model.tokenizer.detokenize(np.array(e, np.int32)) for e in expected] == texts
    assert len(set(texts)) > 1  # rows that decode alike would not show a row reading another's positions


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
