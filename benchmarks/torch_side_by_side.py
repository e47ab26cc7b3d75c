"""keras-adapters against PyTorch + peft, side by side in one run on this machine.

Every variant runs in its own process (one framework per process, nothing
shared), and the variants alternate: round 1 runs A B C ..., round 2 runs
them again, and so on; each process times its steps with process CPU time
(`time.process_time()`, all threads) and wall time, and the report takes
medians over every timed step of every round. MiniLM (all-MiniLM-L6-v2),
length 128, 5 classes, fixed random token batches.

- training: one optimizer step on batch 32 (PyTorch: AdamW, bf16 autocast;
  keras-adapters: `train_on_batch`, `mixed_bfloat16`), for LoRA r8 on
  query/value (peft's configuration, both), our default LoRA (every dense
  layer of the encoder), Houlsby (ours) and full fine-tuning (both);
- serving: PyTorch eager `inference_mode` (float32 and bf16 autocast)
  against our exported SavedModel (Houlsby, `serve_token_ids`, float32 and
  bfloat16; bfloat16 without the 2-D feed-forward rewrite too), batch 32
  throughput and batch 1 latency, and the int8 TFLite model at batch 1.

    # PyTorch side: its own venv (pip install torch==2.13.0, then
    # transformers peft), or this project's `.[bench-torch]` extra
    .venv/bin/python benchmarks/torch_side_by_side.py --torch-python PTENV/bin/python --rounds 3

Writes benchmarks/results/torch_side_by_side.json.
"""

import argparse
import json
import os
import statistics
import sys
import tempfile

from common import time_calls

HERE = os.path.abspath(__file__)
LENGTH, CLASSES = 128, 5


# ----------------------------------------------------------------- workers
def _batch(batch):
    import numpy as np

    rng = np.random.RandomState(0)
    ids = rng.randint(1000, 30000, size=(batch, LENGTH)).astype("int32")
    return ids, rng.randint(0, CLASSES, size=batch)


def torch_worker(what, mode, bf16, batch, steps):
    import torch
    from transformers import BertForSequenceClassification

    torch.manual_seed(0)
    model = BertForSequenceClassification.from_pretrained(os.environ["MODEL_DIR"], num_labels=CLASSES)
    if mode == "lora":
        import peft

        config = peft.LoraConfig(task_type=peft.TaskType.SEQ_CLS, r=8, lora_alpha=16, lora_dropout=0.0,
                                 target_modules=["query", "value"])
        model = peft.get_peft_model(model, config)
    ids, labels = _batch(batch)
    ids = torch.from_numpy(ids).long()
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}
    if what == "train":
        model.train()
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-4)
        labels = torch.from_numpy(labels).long()

        def step():
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = model(**inputs, labels=labels).loss
            loss.float().backward()
            optimizer.step()
    else:
        model.eval()

        def step():
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                model(**inputs)

    return time_calls(step, steps)


def keras_worker(what, target, batch, steps):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import numpy as np
    import tensorflow as tf
    import tensorflow_text  # noqa: F401 (the SavedModel's tokenizer ops)

    ids, labels = _batch(batch)
    if what == "train":
        import keras_adapters as ka
        # lora_qv: peft's configuration (r 8, alpha 16, query/value); lora:
        # ours (every dense layer of the encoder, BENCHMARKS.md).
        method = ka.LoRAConfig(rank=8, alpha=16, target_modules=("query", "value")) if target == "lora_qv" else target
        model = ka.AdapterTextClassifier.from_preset(
            ka.default_preset(), num_classes=CLASSES, method=method, sequence_length=LENGTH, dtype="mixed_bfloat16"
        )
        model.compile()
        x = {"token_ids": ids, "segment_ids": np.zeros_like(ids), "padding_mask": np.ones_like(ids, bool)}

        def step():
            model.train_on_batch(x, labels)
    elif what == "tflite":
        from keras_adapters.serving.export import tflite_signature_runner

        runner = tflite_signature_runner(target)
        x = {"token_ids": ids, "segment_ids": np.zeros_like(ids), "padding_mask": np.ones_like(ids)}

        def step():
            runner(**x)
    else:
        serve = tf.saved_model.load(target).signatures["serve_token_ids"]
        x = {"token_ids": tf.constant(ids), "segment_ids": tf.zeros_like(ids), "padding_mask": tf.ones_like(ids)}

        def step():
            serve(**x)

    return time_calls(step, steps)


# ------------------------------------------------------------------ parent
def export_models(folder):
    """Houlsby (random non-zero adapter weights) as SavedModels and int8 TFLite."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import numpy as np

    import keras_adapters as ka
    from keras_adapters.serving import export
    from keras_adapters.serving import graph as serving_graph
    from keras_adapters.core.injection import adapter_weights

    model = ka.AdapterTextClassifier.from_preset(
        ka.default_preset(), num_classes=CLASSES, method="houlsby", sequence_length=LENGTH
    )
    rng = np.random.default_rng(0)
    for w in adapter_weights(model.backbone):
        w.assign(rng.normal(0, 0.02, w.shape).astype("float32"))
    paths = {
        "f32": ka.export_saved_model(model, f"{folder}/f32"),
        "bf16": ka.export_saved_model(model, f"{folder}/bf16", precision="bfloat16"),
    }
    original = serving_graph.fuse_dense_layers
    serving_graph.fuse_dense_layers = lambda backbone: 0
    try:
        paths["bf16_unfused"] = ka.export_saved_model(model, f"{folder}/bf16_unfused", precision="bfloat16")
    finally:
        serving_graph.fuse_dense_layers = original
    paths["tflite_int8"] = export.export_tflite(model, f"{folder}/tflite", sequence_length=LENGTH, quantize="dynamic")
    return paths


def variants(torch_python, models, steps):
    me, ka_py = [sys.executable, HERE, "worker"], sys.executable
    pt = [torch_python, HERE, "worker", "torch"]
    s_train, s_b32, s_b1 = steps, steps + 4, 4 * steps
    return {
        # name: (argv, batch, kind)
        "pt_train_lora_bf16": (pt + ["train", "lora", "1", "32", str(s_train)], 32, "train"),
        "ka_train_lora_qv_bf16": (me + ["keras", "train", "lora_qv", "32", str(s_train)], 32, "train"),
        "ka_train_lora_bf16": (me + ["keras", "train", "lora", "32", str(s_train)], 32, "train"),
        "ka_train_houlsby_bf16": (me + ["keras", "train", "houlsby", "32", str(s_train)], 32, "train"),
        "pt_train_full_bf16": (pt + ["train", "full", "1", "32", str(s_train)], 32, "train"),
        "ka_train_full_bf16": (me + ["keras", "train", "full", "32", str(s_train)], 32, "train"),
        "pt_infer_bf16_b32": (pt + ["infer", "full", "1", "32", str(s_b32)], 32, "infer"),
        "pt_infer_f32_b32": (pt + ["infer", "full", "0", "32", str(s_b32)], 32, "infer"),
        "ka_savedmodel_f32_b32": (me + ["keras", "infer", models["f32"], "32", str(s_b32)], 32, "infer"),
        "ka_savedmodel_bf16_b32": (me + ["keras", "infer", models["bf16"], "32", str(s_b32)], 32, "infer"),
        "ka_savedmodel_bf16_unfused_b32": (
            me + ["keras", "infer", models["bf16_unfused"], "32", str(s_b32)], 32, "infer"),
        "pt_infer_bf16_b1": (pt + ["infer", "full", "1", "1", str(s_b1)], 1, "latency"),
        "pt_infer_f32_b1": (pt + ["infer", "full", "0", "1", str(s_b1)], 1, "latency"),
        "ka_savedmodel_f32_b1": (me + ["keras", "infer", models["f32"], "1", str(s_b1)], 1, "latency"),
        "ka_savedmodel_bf16_b1": (me + ["keras", "infer", models["bf16"], "1", str(s_b1)], 1, "latency"),
        "ka_tflite_int8_b1": (me + ["keras", "tflite", models["tflite_int8"], "1", str(s_b1)], 1, "latency"),
    }, ka_py


def summarize(times, batch, kind):
    cpu, wall = statistics.median(times["cpu"]), statistics.median(times["wall"])
    if kind == "latency":
        return {"cpu_ms": round(1000 * cpu, 2), "wall_ms": round(1000 * wall, 2), "steps": len(times["cpu"])}
    return {"ex_per_cpu_s": round(batch / cpu, 2), "ex_per_wall_s": round(batch / wall, 2),
            "steps": len(times["cpu"])}


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "worker":
        return worker(sys.argv[2:])
    parser = argparse.ArgumentParser()
    parser.add_argument("--torch-python", required=True, help="a Python with torch==2.13.0, transformers, peft")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=8, help="timed training steps per process")
    parser.add_argument("--only", default="", help="comma list of variant-name prefixes")
    parser.add_argument("--output", default="benchmarks/results/torch_side_by_side.json")
    args = parser.parse_args()
    sys.path.insert(0, os.path.dirname(HERE))
    from common import git_revision
    from common import machine_description
    from common import minilm_env
    from common import only
    from common import run_worker

    env = minilm_env()
    folder = tempfile.mkdtemp(prefix="side_by_side_")
    table, _ = variants(args.torch_python, export_models(folder), args.steps)
    table = only(table, args.only)
    times = {name: {"cpu": [], "wall": []} for name in table}
    for round_ in range(args.rounds):
        for name, (argv, _, _) in table.items():
            result = run_worker(name, argv, env)
            for key in ("cpu", "wall"):
                times[name][key] += result[key]
            print(f"round {round_ + 1} {name}: {summarize(result, table[name][1], table[name][2])}", flush=True)
    results = {name: summarize(times[name], batch, kind) for name, (_, batch, kind) in table.items()}
    report = {
        "machine": machine_description(),
        "git": git_revision(),
        "torch_python": args.torch_python,
        "rounds": args.rounds,
        "results": results,
    }
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(report, f, indent=2)
    print(json.dumps(report, indent=2))


def worker(argv):
    framework, what, target = argv[0], argv[1], argv[2]
    if framework == "torch":
        bf16, batch, steps = argv[3] == "1", int(argv[4]), int(argv[5])
        result = torch_worker(what, target, bf16, batch, steps)
    else:
        batch, steps = int(argv[3]), int(argv[4])
        result = keras_worker(what, target, batch, steps)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
