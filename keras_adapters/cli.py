"""`keras-adapters`: train, evaluate and predict from the command line."""

import argparse
import json
import os
import sys

from keras_adapters.runs import conversion  # noqa: E402
from keras_adapters.runs import evaluation  # noqa: E402
from keras_adapters.runs import generation  # noqa: E402
from keras_adapters.serving import decoder_tflite  # noqa: E402
from keras_adapters.serving import export  # noqa: E402
from keras_adapters.core import precision  # noqa: E402
from keras_adapters.core import privacy  # noqa: E402
from keras_adapters.runs import folder as runs  # noqa: E402
from keras_adapters.serving import graph as serving_graph  # noqa: E402
from keras_adapters.serving import generator as serving_generator  # noqa: E402
from keras_adapters import tasks  # noqa: E402
from keras_adapters.io.adapter_folder import AdapterFormatError  # noqa: E402
from keras_adapters.io import gguf_checkpoint  # noqa: E402
from keras_adapters.io import peft_format  # noqa: E402
from keras_adapters.io.text_data import DatasetError  # noqa: E402
from keras_adapters.runs.distribute import STRATEGIES  # noqa: E402
from keras_adapters.methods.registry import available_methods  # noqa: E402
from keras_adapters.methods.registry import config_from_options  # noqa: E402
from keras_adapters.io.presets import PresetNotFoundError  # noqa: E402
from keras_adapters.runs.training import train_classifier  # noqa: E402

DESCRIPTION = """Fine-tune adapters on a pretrained BERT and use them.

  keras-adapters train DATA --output RUN_DIR [--method houlsby] [--epochs 3] [--task auto] ...
  keras-adapters train DATA_DIR --output RUN_DIR --fuse RUN_A,RUN_B[,...]   (AdapterFusion)
  keras-adapters train DATA.jsonl --task causal-lm --preset FOLDER_OR_GGUF --output RUN_DIR [--chat]
  keras-adapters evaluate RUN_DIR DATA [--json]    (causal-lm: perplexity, BLEU and chrF)
  keras-adapters predict RUN_DIR [TEXT ...] [--file F] [--json]
      (pairs: TEXT_A TEXT_B ...; taggers: entities; question answering: QUESTION CONTEXT ...)
  keras-adapters export RUN_DIR --format saved_model|tflite --output OUT [--precision bfloat16] [...]
  keras-adapters export --adapters RUN_A,RUN_B --format saved_model --output OUT
      (many tasks, one backbone: each request row names its run; one pass per batch)
  keras-adapters promote MODEL --serving-config DIR --label stable [--version N]
      (point a TF Serving version label at a version DIR/models.config loads)

DATA is a folder with one sub-folder per class and one .txt file per example, or
tfds:NAME for a prepared TensorFlow Datasets set (text-classification); or a .jsonl, .csv or
.tsv file with text_a, text_b and label columns (pair-classification); or a CoNLL-style file of
'word<TAB>tag' lines with blank lines between sentences (token-classification); or a SQuAD v1.1
JSON file (question-answering: long contexts are cut into windows of --sequence-length tokens
sharing --stride).
RUN_DIR receives adapter/ (load it with keras_adapters.load_run), class_names.json,
train_config.json, examples.json (a few training inputs: export's TF Serving warm-up requests),
history.json, metrics.json and TensorBoard logs/; never a copy of the backbone."""


def _whole_number(minimum):
    """An argparse type: an integer of at least `minimum` (argparse exits 2
    naming the option and the value before anything loads)."""

    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


POSITIVE = _whole_number(1)


def _parser():
    parser = argparse.ArgumentParser(
        prog="keras-adapters",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="fine-tune an adapter on a dataset")
    train.add_argument("data", metavar="DATA")
    train.add_argument("--task", default="auto",
                       choices=["auto", *map(tasks.cli_name, tasks.available_tasks())],
                       help="auto: told from DATA (a folder or tfds:NAME: text-classification; a .jsonl/.csv/"
                            ".tsv file with a text_b column: pair-classification; 'word<TAB>tag' lines: "
                            "token-classification; SQuAD JSON: question-answering; a .jsonl file of prompt/"
                            "completion or messages records: causal-lm, a decoder's --preset)")
    train.add_argument("--output", "-o", required=True, metavar="RUN_DIR")
    train.add_argument("--preset", "--backbone", dest="preset", default="default", metavar="PRESET_OR_DIR",
                       help="the backbone: a keras-hub preset folder, a Hugging Face BERT folder, or 'default' "
                            "(embedded MiniLM); --backbone is the old spelling")
    train.add_argument("--method", default=None, choices=available_methods(),
                       help="default: houlsby (lora for causal-lm)")
    train.add_argument("--method-option", action="append", default=[], metavar="KEY=VALUE",
                       help="a field of the method's config, e.g. rank=16, use_dora=true, "
                            "target_modules=query,value (repeatable)")
    train.add_argument("--cache-frozen-layers", action="store_true",
                       help="compute the encoder layers below the adapter once and train the top only "
                            "(with --method-option target_layers=..., e.g. transformer_layer_[45])")
    train.add_argument("--fuse", default=None, metavar="RUN_A,RUN_B",
                       help="train an AdapterFusion over these finished runs' adapters instead")
    train.add_argument("--epochs", type=int, default=3)
    train.add_argument("--batch-size", type=int, default=None,
                       help="examples per step, the global batch (split over the replicas of --strategy; "
                            "default 32, 8 for causal-lm)")
    train.add_argument("--sequence-length", type=int, default=None, help="tokens per example (default 128, "
                                                                         "512 for causal-lm)")
    train.add_argument("--chat", action="store_true",
                       help="causal-lm: write prompt/completion records as a user message and the answer under "
                            "the checkpoint's chat template (messages records always are)")
    train.add_argument("--learning-rate", type=float, default=None,
                       help="peak learning rate (default: the method's for the task, keras_adapters/tasks/defaults.py; "
                            "a run being resumed keeps its own)")
    train.add_argument("--precision", default="auto", choices=["auto", *precision.PRECISIONS],
                       help="auto: the fastest precision that costs no accuracy here (keras_adapters/core/precision.py); "
                            "autocast_bfloat16: matrix products in bf16, residual stream, norms and loss in float32")
    train.add_argument("--validation-split", type=float, default=None,
                       help="share held out to choose the best epoch (default 0.1; none with "
                            "--validation-data or --dp-epsilon)")
    train.add_argument("--validation-data", default=None, metavar="DATA",
                       help="held-out examples in DATA's format to choose the best epoch by, instead of a "
                            "split; with --dp-epsilon they are not accounted, so pass only public data")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--strategy", default="default", choices=STRATEGIES,
                       help="mirrored: every local GPU (or CPU device); multi-worker: a cluster from "
                       "TF_CONFIG, the same command on every machine")
    train.add_argument("--bucket-by-length", action="store_true",
                       help="batch texts of similar length and trim padding")
    train.add_argument("--early-stopping", type=int, default=None, metavar="PATIENCE")
    train.add_argument("--pooling", default="auto", choices=["auto", "cls", "mean"],
                       help="auto: the checkpoint's own pooling (mean for the default MiniLM)")
    _add_key_options(train)
    train.add_argument("--stride", type=int, default=None,
                       help="question-answering: tokens neighbouring windows of a long context share "
                            "(default 128, or half the room in short sequences)")
    train.add_argument("--max-question-length", type=int, default=None,
                       help="question-answering: question tokens kept (default 64)")
    train.add_argument("--max-answer-length", type=int, default=None,
                       help="question-answering: the longest answer in tokens predictions pick (default 30)")
    dp = train.add_argument_group("differential privacy (DP-SGD)")
    dp.add_argument("--dp-epsilon", type=float, default=None, metavar="EPSILON",
                    help="train with DP-SGD within this budget (noise calibrated to it unless given)")
    dp.add_argument("--dp-delta", type=float, default=1e-5, metavar="DELTA",
                    help="below 1 / training examples (default 1e-5)")
    dp.add_argument("--dp-clip-norm", type=float, default=1.0, metavar="C",
                    help="each example's gradient is scaled to at most this L2 norm (default 1.0)")
    dp.add_argument("--dp-noise-multiplier", type=float, default=None, metavar="SIGMA",
                    help="noise std / clip norm; with --dp-epsilon, training stops at the budget")
    dp.add_argument("--dp-accountant", default="rdp", choices=privacy.ACCOUNTANTS,
                    help="rdp (default, fast) or pld (tighter epsilon, slower to calibrate)")
    train.add_argument("--overwrite", action="store_true",
                       help="RUN_DIR holds a run with other settings: discard it and start over "
                            "(without it that run is refused; one with the same settings resumes)")
    train.add_argument("--quiet", action="store_true", help="no progress bar")

    evaluate = sub.add_parser("evaluate", help="evaluate a run on a labelled dataset")
    evaluate.add_argument("run", metavar="RUN_DIR")
    evaluate.add_argument("data", metavar="DATA")
    evaluate.add_argument("--batch-size", type=POSITIVE, default=32)
    evaluate.add_argument("--json", action="store_true", help="print one JSON object")
    _add_key_options(evaluate)
    evaluate.add_argument("--split", default="test", help="tfds: split to evaluate")
    evaluate.add_argument("--max-new-tokens", type=POSITIVE, default=None,
                          help="causal-lm: the most tokens generated per prompt for BLEU/chrF (default 128)")

    predict = sub.add_parser("predict", help="classify, tag, answer or generate with a run's adapter")
    predict.add_argument("run", metavar="RUN_DIR")
    predict.add_argument("texts", nargs="*", metavar="TEXT",
                         help="texts; for a pair run, TEXT_A TEXT_B ...; for a question-answering run, "
                              "QUESTION CONTEXT ...")
    predict.add_argument("--file", "-f", help="one text per line ('-' for stdin); for a pair run, a .jsonl, "
                                              ".csv or .tsv file with text_a and text_b columns; for a "
                                              "question-answering run, a SQuAD .json file or a .jsonl, .csv or "
                                              ".tsv file with question and context columns")
    predict.add_argument("--text-a-key", default="text_a", help="pair files: the first text's column")
    predict.add_argument("--text-b-key", default="text_b", help="pair files: the second text's column")
    predict.add_argument("--batch-size", type=POSITIVE, default=32)
    predict.add_argument("--json", action="store_true")
    predict.add_argument("--max-new-tokens", type=POSITIVE, default=None,
                         help="causal-lm: the most tokens generated per prompt (default 128)")
    predict.add_argument("--sampler", default=None, choices=["greedy", "top_k", "top_p", "random"],
                         help="causal-lm: how each next token is chosen (default greedy)")
    export = sub.add_parser("export", help="export a run for TF Serving or TFLite")
    export.add_argument("run", metavar="RUN_DIR", nargs="?")
    export.add_argument("--format", required=True, choices=["saved_model", "tflite"])
    export.add_argument("--output", "-o", required=True, metavar="OUT")
    export.add_argument("--version", type=_whole_number(0), default=None,
                        help="saved_model: version folder (TF Serving loads whole numbers from 0); default: the "
                             "one after the highest in OUT (1 for a new OUT)")
    export.add_argument("--serving-config", metavar="DIR",
                        help="saved_model: add this version to DIR/models.config (TF Serving's --model_config_file; "
                             "model name: OUT's folder name; other models' entries are kept), and write "
                             "DIR/batching.config (--batching_parameters_file) unless there is one")
    export.add_argument("--label", action="append", default=[], metavar="NAME",
                        help="with --serving-config: point this version label (stable, canary, ...) at the new "
                             "version; repeatable")
    export.add_argument("--adapters", metavar="RUN_A,RUN_B",
                        help="several runs on one backbone: a routed signature per task (classify, "
                             "classify_pairs, tag, answer, label: each row names its run) and <verb>_<run> per run "
                             "(each also classify_<run>); tflite: runs of one task, an adapter_id input")
    export.add_argument("--no-task-signatures", action="store_true",
                        help="with --adapters: only the routed signatures (less memory when served)")
    export.add_argument("--no-merge", action="store_true",
                        help="keep LoRA/IA3 as separate layers instead of merging")
    export.add_argument("--no-warmup", action="store_true",
                        help="saved_model: no assets.extra/tf_serving_warmup_requests (by default TF Serving "
                             "replays requests made of each run's kept training inputs before serving a version)")
    export.add_argument("--sequence-length", type=_whole_number(3), default=None,
                        help="tflite: fixed length (at most the backbone's positions); causal-lm: the most prompt "
                             "tokens plus max_new_tokens a request may ask for (default 4096; tflite: 256)")
    export.add_argument("--xla", action="store_true",
                        help="causal-lm saved_model: compile the decoding loop with XLA (TF Serving then needs "
                             "--xla_cpu_compilation_enabled=true)")
    export.add_argument("--quantize", default="none", choices=["none", "dynamic"])
    export.add_argument("--precision", default="float32", choices=list(serving_graph.PRECISIONS),
                        help="saved_model: what the served graph computes in (bfloat16: faster on CPUs "
                             "with AVX512-BF16/AMX; float16: GPUs)")

    convert = sub.add_parser("convert", help="turn a peft or AdapterHub adapter folder into ours, ours into a "
                                             "peft folder, or a GGUF checkpoint into a Hugging Face folder")
    convert.add_argument("source", metavar="SRC", help="a peft or AdapterHub adapter folder; with --to peft or adapterhub, our "
                                                       "adapter or run folder; or a .gguf file (Llama family, Gemma 3)")
    convert.add_argument("--output", "-o", required=True, metavar="DST", help="the folder to write")
    convert.add_argument("--to", default="keras-adapters", choices=["keras-adapters", "peft", "adapterhub"],
                         help="peft: a folder PeftModel.from_pretrained loads onto "
                              "AutoModelForSequenceClassification (LoRA, rsLoRA, DoRA, IA3 with pooling 'cls'); "
                              "adapterhub: a folder AdapterHub's model.load_adapter loads with its head "
                              "(Pfeiffer, Houlsby with frozen layer norms, parallel, LoRA, IA3, prefix, prompt)")
    convert.add_argument("--preset", default=None,
                         help="the checkpoint SRC was trained on, when its base_model_name_or_path is not a "
                              "folder here")
    convert.add_argument("--sequence-length", type=_whole_number(3), default=128,
                         help="tokens per example the adapter folder records")

    promote = sub.add_parser("promote", help="point a version label of a served model at another version")
    promote.add_argument("model", metavar="MODEL", help="the model's name in models.config (its export folder's name)")
    promote.add_argument("--serving-config", required=True, metavar="DIR", help="the folder holding models.config")
    promote.add_argument("--label", required=True, metavar="NAME", help="the version label to move (e.g. stable)")
    promote.add_argument("--version", type=_whole_number(0), default=None,
                         help="a version models.config loads (default: the newest)")
    return parser


def _add_key_options(command):
    command.add_argument("--text-key", default="text", help="tfds: the text feature")
    command.add_argument("--label-key", default=None,
                         help="tfds: the label feature; files: the label column (default: label; multi-label: labels)")
    command.add_argument("--text-a-key", default="text_a", help="pair files: the first text's column")
    command.add_argument("--text-b-key", default="text_b", help="pair files: the second text's column")


def _data_options(args):
    if not str(args.data).startswith("tfds:"):
        options = {"text_a_key": args.text_a_key, "text_b_key": args.text_b_key, "label_key": args.label_key}
        return {k: v for k, v in options.items() if v is not None}
    options = {"text_key": args.text_key, "label_key": args.label_key or "label"}
    if getattr(args, "split", None):
        options["split"] = args.split
    return options


def _qa_options(args):
    return {k: getattr(args, k) for k in ("stride", "max_question_length", "max_answer_length")}


def _progress(quiet):
    """Keras' `verbose`: a progress bar on a terminal; one line per epoch
    into a log or a pipe (a bar's carriage returns and colour codes would
    make each epoch one long line there); nothing with --quiet."""
    if quiet:
        return 0
    return 1 if sys.stdout.isatty() else 2


def _train_task(args):
    """The task to train: --task, or the one DATA's format says."""
    return tasks.get_task(tasks.detect_task(args.data, **_data_options(args)) if args.task == "auto" else args.task)


def _run_options(task, args):
    """The options of `task.evaluate`/`task.predict` given on the command line;
    an error for one the run's task does not take (`--max-new-tokens` of a classifier)."""
    given = {k: getattr(args, k) for k in RUN_OPTIONS if getattr(args, k, None) is not None}
    refused = ["--" + k.replace("_", "-") for k in given if k not in task.run_options]
    if refused:
        takers = [t for t in map(tasks.get_task, tasks.available_tasks()) if set(given) <= set(t.run_options)]
        raise ValueError(f"{', '.join(refused)}: for {' and '.join(t.cli_name for t in takers) or 'no'} runs; "
                         f"this run does {task.cli_name}.")
    return given


#: The options some tasks' `evaluate`/`predict` take (`Task.run_options`).
RUN_OPTIONS = ("max_new_tokens", "sampler")
#: Training options causal-lm runs do not take yet, with the value that means "not given".
_NOT_FOR_CAUSAL_LM = {"dp_epsilon": None, "dp_noise_multiplier": None, "precision": "auto", "strategy": "default",
                      "validation_split": None, "early_stopping": None, "fuse": None,
                      "cache_frozen_layers": False, "pooling": "auto"}


def cmd_train_causal_lm(args):
    given = ["--" + k.replace("_", "-") for k, v in _NOT_FOR_CAUSAL_LM.items() if getattr(args, k) != v]
    if given:
        raise ValueError(f"{', '.join(given)}: not supported for causal-lm runs yet (they train in float32 on one "
                         "device, and choose the best epoch by --validation-data).")
    for name in ("batch_size", "sequence_length"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}.")
    model, summary = generation.train_causal_lm(
        args.data, args.output, args.preset, method=config_from_options(args.method or "lora", args.method_option),
        epochs=args.epochs, batch_size=args.batch_size, sequence_length=args.sequence_length,
        learning_rate=args.learning_rate, validation_data=args.validation_data, seed=args.seed, chat=args.chat,
        bucket_by_sequence_length=args.bucket_by_length,
        verbose=_progress(args.quiet), overwrite=args.overwrite,
    )
    print(f"trained {summary['method']['method']} on {summary['examples']} examples in {summary['seconds']:.1f} s "
          f"({summary['completion_tokens_per_second']:.0f} completion tokens/s); adapter of epoch "
          f"{summary['best_epoch']}: {runs.adapter_dir(args.output)}")
    return 0


def cmd_train(args):
    task = _train_task(args)
    if task.decoder:
        return cmd_train_causal_lm(args)
    args.method = args.method or "houlsby"
    args.batch_size = 32 if args.batch_size is None else args.batch_size
    args.sequence_length = 128 if args.sequence_length is None else args.sequence_length
    fuse = [r for r in args.fuse.split(",") if r] if args.fuse else None
    if fuse is not None and len(fuse) < 2:
        raise ValueError("--fuse needs at least two run folders, separated by commas.")
    model, summary = train_classifier(
        args.data,
        args.output,
        preset=args.preset,
        method=config_from_options(args.method, args.method_option),
        epochs=args.epochs,
        batch_size=args.batch_size,
        sequence_length=args.sequence_length,
        learning_rate=args.learning_rate,
        precision=args.precision,
        validation_split="auto" if args.validation_split is None else (args.validation_split or None),
        validation_data=args.validation_data,
        seed=args.seed,
        strategy=args.strategy,
        bucket_by_sequence_length=args.bucket_by_length,
        early_stopping_patience=args.early_stopping,
        pooling=args.pooling,
        verbose=_progress(args.quiet),
        fuse=fuse,
        overwrite=args.overwrite,
        cache_frozen_layers=args.cache_frozen_layers,
        task=task.name,
        privacy=_privacy(args),
        **_data_options(args),
        **{k: v for k, v in _qa_options(args).items() if v is not None},
    )
    if summary["best_metric"] is None and summary["best_epoch"]:  # private: no metric chooses
        best = f"adapter of the last epoch ({summary['best_epoch']})"
    elif summary["best_epoch"]:
        best = f"best {summary['best_metric']} {summary['best_value']:.4f} at epoch {summary['best_epoch']}"
    else:
        best = "no validation metric"
    if summary.get("already_complete"):
        print(f"{args.output} already holds this run, complete ({summary['epochs_run']} epochs; {best}); "
              "nothing to do. Pass --overwrite to train it again.")
        return 0
    what = f"a fusion of {', '.join(model.active_adapters.children)}" if fuse else args.method
    print(
        f"trained {what} in {summary['seconds']:.1f} s "
        f"({summary['examples_per_second']} examples/s, {summary['epochs_run']} epochs); "
        f"{best}; adapter: {runs.adapter_dir(args.output)}"
    )
    if model.privacy_report():
        print(privacy.describe(model.privacy_report()))
    return 0


def _privacy(args):
    """A `DPConfig` from the --dp-* options, or `None` (no --dp-epsilon nor --dp-noise-multiplier)."""
    if args.dp_epsilon is None and args.dp_noise_multiplier is None:
        return None
    return privacy.DPConfig(
        epsilon=args.dp_epsilon, delta=args.dp_delta, clip_norm=args.dp_clip_norm,
        noise_multiplier=args.dp_noise_multiplier, accountant=args.dp_accountant,
    )


def cmd_evaluate(args):
    task = tasks.get_task(runs.run_task(args.run))
    result = evaluation.evaluate_run(
        args.run, args.data, batch_size=args.batch_size, **_data_options(args), **_run_options(task, args)
    )
    if args.json:
        print(json.dumps(runs.finite(result), allow_nan=False))
    else:
        print(task.format_report(result))
        if result.get("privacy"):
            print(privacy.describe(result["privacy"]))
    sys.stdout.flush()  # the numbers are out before anything is written to the run folder
    try:
        runs.update_metrics_file(args.run, "evaluation", {"data": str(args.data), **result})
        if not args.json and "confusion_matrix" in result:
            png = evaluation.write_confusion_png(result, os.path.join(args.run, "confusion_matrix.png"))
            print(f"\nconfusion matrix image: {png}")
    except OSError as e:
        print(f"keras-adapters evaluate: warning: the results above were not saved in {args.run} "
              f"({e.strerror or e}); the run folder is not writable.", file=sys.stderr)
    return 0


def _columns(task, args):
    """The examples to predict, one list per `task.input_fields` entry: the
    TEXT arguments (taken in groups), then the examples of `--file`."""
    fields, texts = task.input_fields, list(args.texts)
    if len(texts) % len(fields):
        raise ValueError(
            f"This run ({task.cli_name}) takes {len(fields)} texts per example: pass "
            f"{' '.join(f.upper() for f in fields)} ... (got {len(texts)} texts)."
        )
    columns = [texts[i::len(fields)] for i in range(len(fields))]
    if args.file:
        read = task.read_inputs(args.file, {k: getattr(args, k) for k in ("text_a_key", "text_b_key") if hasattr(args, k)})
        columns = [c + r for c, r in zip(columns, read)]
    if not columns[0]:
        raise ValueError(f"No examples to predict: pass {' '.join(f.upper() for f in fields)} arguments or --file F.")
    return columns


def cmd_predict(args):
    if not args.texts and not args.file:
        raise ValueError("No texts to predict: pass TEXT arguments or --file F.")
    task = tasks.get_task(runs.run_task(args.run))
    options = _run_options(task, args)
    model = runs.load_run(args.run)
    results = task.predict(model, _columns(task, args), batch_size=args.batch_size, **options)
    if args.json:
        print(json.dumps(runs.finite(results), allow_nan=False))
    else:
        for result in results:
            print(task.format_prediction(result))
    return 0


def cmd_export(args):
    run_dirs = args.adapters or args.run
    if not run_dirs:
        raise ValueError("Pass RUN_DIR, or --adapters RUN_A,RUN_B for a multi-adapter SavedModel.")
    decoders = {r: tasks.get_task(runs.run_task(r)).decoder for r in run_dirs.split(",") if r}
    if any(decoders.values()):
        return _export_decoder(args, run_dirs, decoders)
    several = "," in run_dirs
    names = ", ".join(runs.task_name(r) for r in run_dirs.split(",") if r)
    if args.format == "saved_model":
        out = export.export_run_saved_model(
            run_dirs, args.output, version=args.version, merge=not args.no_merge,
            task_signatures=not args.no_task_signatures, precision=args.precision,
            warmup_requests=not args.no_warmup, serving_config=args.serving_config, labels=args.label,
        )
        signatures = (
            export.describe_run_signatures(run_dirs, task_signatures=not args.no_task_signatures) if several
            else f"serving_default ({tasks.get_task(runs.run_task(run_dirs)).signature_summary}), serve_token_ids"
        )
        print(f"SavedModel written to {out} (signatures: {signatures})")
        if os.path.isfile(os.path.join(out, export.warmup.WARMUP_FILE)):
            print(f"TF Serving warm-up requests: {os.path.join(out, export.warmup.WARMUP_FILE)}")
        if args.serving_config:
            config = export.server_config
            print(f"TF Serving model config: {os.path.join(args.serving_config, config.MODELS_FILE)}; batching "
                  f"parameters: {os.path.join(args.serving_config, config.BATCHING_FILE)}")
        return 0
    if args.precision != "float32":
        raise ValueError(
            f"--precision {args.precision} is for --format saved_model; a TFLite model's size and "
            "precision are set by --quantize (dynamic: int8 weights)."
        )
    given = [flag for flag, value in (("--version", args.version is not None), ("--serving-config", args.serving_config),
                                      ("--label", args.label), ("--no-warmup", args.no_warmup)) if value]
    if given:
        raise ValueError(f"{', '.join(given)}: for --format saved_model (TF Serving); a TFLite model has none.")
    path = export.export_run_tflite(
        run_dirs, args.output, sequence_length=args.sequence_length,
        quantize=args.quantize, merge=not args.no_merge,
    )
    extra = f"adapters.json (adapter_id 0.. = {names})" if several else "labels.txt"
    print(f"TFLite model written to {path} ({os.path.getsize(path) / 1e6:.1f} MB), with vocab.txt and {extra}")
    return 0


#: Export options a decoder's export does not take, with the value that means "not given".
_NOT_FOR_DECODERS = {"serving_config": None, "label": [], "precision": "float32", "no_merge": False,
                     "no_warmup": False, "no_task_signatures": False}


def _export_decoder(args, run_dirs, decoders):
    encoders = [r for r, decoder in decoders.items() if not decoder]
    if encoders:
        raise ValueError(f"{', '.join(encoders)} adapt an encoder and {', '.join(r for r in decoders if r not in encoders)} "
                         "a decoder: one export serves one backbone, so export them separately.")
    given = ["--" + k.replace("_", "-") for k, v in _NOT_FOR_DECODERS.items() if getattr(args, k) != v]
    if args.format == "saved_model" and args.quantize != "none":
        given.append("--quantize")
    if given:
        raise ValueError(f"{', '.join(given)}: not supported for causal-lm exports yet (a float32 generate "
                         "signature; --quantize for --format tflite).")
    if args.format == "tflite":
        return _export_decoder_tflite(args, run_dirs)
    out = serving_generator.export_runs(run_dirs, args.output, version=args.version,
                                        sequence_length=args.sequence_length, xla=args.xla)
    inputs = "prompt, max_new_tokens, temperature, top_k, top_p" + (", adapter" if "," in run_dirs else "")
    print(f"SavedModel written to {out} (signature: generate ({inputs}) -> text)")
    return 0


def _export_decoder_tflite(args, run_dir):
    if "," in run_dir:
        raise ValueError("A TFLite decoder serves one adapter: pass one causal-lm run (several route in a SavedModel).")
    path = decoder_tflite.export_run_tflite(run_dir, args.output, args.sequence_length, args.quantize)
    print(f"TFLite decoder written to {path} ({os.path.getsize(path) / 1e6:.1f} MB; signatures start and step, "
          "the app runs the loop), with generation.json and the tokenizer's files")
    return 0


def cmd_convert(args):
    if gguf_checkpoint.is_gguf_file(args.source):
        if args.to != "keras-adapters":
            raise ValueError(f"{args.source} is a model checkpoint: it converts into a Hugging Face folder, not --to {args.to}.")
        out, model = conversion.checkpoint(args.source, args.output)
        print(f"{model} written to {out} as a Hugging Face folder, dequantized to float32 (pass it as --preset)")
        return 0
    if args.to == "peft":
        out, method = conversion.to_peft(args.source, args.output)
        base = ("AutoModelForCausalLM.from_pretrained(BASE)" if peft_format.is_causal_lm_folder(out)
                else "AutoModelForSequenceClassification.from_pretrained(BASE, num_labels=N)")
        print(f"{method} adapter written to {out} as a peft folder (PeftModel.from_pretrained({base}, {out!r}))")
        return 0
    if args.to == "adapterhub":
        out, method = conversion.to_adapterhub(args.source, args.output)
        print(f"{method} adapter written to {out} as an AdapterHub folder with its head "
              f"(AutoAdapterModel.from_pretrained(BASE).load_adapter({out!r}))")
        return 0
    out, method = conversion.convert(args.source, args.output, preset=args.preset, sequence_length=args.sequence_length)
    model_class = "AdapterCausalLM" if tasks.get_task(runs.run_task(out)).decoder else "AdapterModel"
    print(f"{method} adapter written to {out} (load it with {model_class}.from_adapter, or pass it to "
          "evaluate, predict and export as RUN_DIR)")
    return 0


def cmd_promote(args):
    path, version = export.server_config.move_label(args.serving_config, args.model, args.label, args.version)
    print(f"{args.model}: label {args.label} -> version {version} in {path} (a server started with "
          "--model_config_file_poll_wait_seconds applies it; otherwise restart it)")
    return 0


def main(argv=None):
    args = _parser().parse_args(argv)

    handler = {
        "train": cmd_train,
        "evaluate": cmd_evaluate,
        "predict": cmd_predict,
        "export": cmd_export,
        "promote": cmd_promote,
        "convert": cmd_convert,
    }[args.command]
    try:
        return handler(args)
    except (DatasetError, AdapterFormatError, PresetNotFoundError, ValueError, OSError) as e:
        print(f"keras-adapters {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        resume = (
            f" Run the same command again to resume from the last finished epoch ({args.output}/backup)."
            if args.command == "train"
            else ""
        )
        print(f"\nkeras-adapters {args.command}: interrupted.{resume}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
