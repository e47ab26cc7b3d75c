"""Extractive question answering end to end: SQuAD v1.1 with the CLI.

Writes SQuAD files split by article (3,000 training questions, 600 test
questions of other articles) from the BIG-bench archive that
`scripts/setup.sh` keeps in `data/cache/`, then runs what a user would:

    keras-adapters train data/cache/squad/train_3000.json -o RUN --method lora --sequence-length 256 --stride 96
    keras-adapters evaluate RUN data/cache/squad/test_600.json --json   (here: evaluation.evaluate_run)
    keras-adapters predict RUN "QUESTION" "CONTEXT"
    keras-adapters export RUN --format saved_model -o SERVING   (question, context -> answer, start, end, score)

and checks the exported SavedModel's answers against the run in this
process. It fails (exit 1) when the SavedModel disagrees or F1 is below 20
(a model that learned nothing scores about 5).

    .venv/bin/python examples/squad_qa.py [--method lora] [--epochs 2] [--learning-rate 1e-4] [--train-size 3000]
"""

import argparse
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bigbench_data import squad_split  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", default="runs/squad")
    parser.add_argument("--method", default="lora")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--learning-rate", default=None, help="default: the method's")
    parser.add_argument("--train-size", type=int, default=3000, help="training questions (a quick try: 300)")
    args = parser.parse_args()

    import tensorflow as tf

    from keras_adapters import cli
    from keras_adapters.runs import evaluation
    from keras_adapters.tasks.question_answering import data as qa_data
    from keras_adapters.runs import folder as runs

    files = squad_split(train_size=args.train_size, test_size=600)
    run = os.path.join(args.workdir, f"run-{args.method}")
    extra = ["--learning-rate", args.learning_rate] if args.learning_rate else []
    code = cli.main([
        "train", files["train"], "--output", run, "--method", args.method, "--epochs", str(args.epochs),
        "--sequence-length", "256", "--stride", "96", "--validation-split", "0", "--overwrite", *extra,
    ])
    if code:
        return code
    result = evaluation.evaluate_run(run, files["test"])  # what `keras-adapters evaluate RUN TEST --json` prints
    print(f"test exact match {result['exact_match']:.1f}, F1 {result['f1']:.1f} on {result['num_examples']} questions")

    context = ("The Eiffel Tower was designed by the engineering company of Gustave Eiffel and built "
               "between 1887 and 1889 as the entrance arch of the 1889 World's Fair in Paris.")
    cli.main(["predict", run, "When was the Eiffel Tower built?", context])

    serving = os.path.join(args.workdir, f"serving-{args.method}")
    if os.path.isdir(os.path.join(serving, "1")):
        import shutil

        shutil.rmtree(os.path.join(serving, "1"))
    if cli.main(["export", run, "--format", "saved_model", "--output", serving]):
        return 1
    examples = qa_data.read_squad(files["test"])[:32]
    questions, contexts = [e["question"] for e in examples], [e["context"] for e in examples]
    served = tf.saved_model.load(os.path.join(serving, "1")).signatures["serving_default"]
    got = served(question=tf.constant(questions), context=tf.constant(contexts))
    expected = runs.load_run(run).answer(questions, contexts)
    same = sum(a.decode() == e["answer"] for a, e in zip(got["answer"].numpy(), expected))
    print(f"SavedModel against the run on 32 test questions: {same} identical answers")
    print(json.dumps(expected[:3], indent=1))
    if same < 31 or result["f1"] < 20:
        print("FAILED: the SavedModel disagrees with the run, or the adapter learned nothing")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
