"""Extractive question answering: the answer's span in a context, from SQuAD files.

Long contexts are cut into overlapping windows, each labelled with the
answer's first and last token (`data`); reports are SQuAD v1.1 exact match
and F1 (`metrics`).
"""

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from keras_adapters.io import text_data as data_lib
from keras_adapters.tasks.base import QUESTION_ANSWERING
from keras_adapters.tasks.base import Task
from keras_adapters.tasks.base import TaskServing
from keras_adapters.tasks.base import looks_like_squad
from keras_adapters.tasks.base import register_task
from keras_adapters.tasks.routing import settings_index
from keras_adapters.tasks.classification import POOLINGS
from keras_adapters.tasks.classification import ClassificationHead
from keras_adapters.tasks.classification import check_labels
from keras_adapters.tasks.classification import dropout_and_logits
from keras_adapters.tasks.pair_classification import read_pairs
from keras_adapters.tasks.question_answering import data as qa_data
from keras_adapters.tasks.question_answering import metrics as answer_metrics

#: Head settings only a question-answering head has (kept in adapter folders).
QA_SETTINGS = ("stride", "max_answer_length", "max_question_length")
#: Data options that shape a question-answering head's windows (recorded with it).
QA_DATA_OPTIONS = ("stride", "max_question_length")


@keras.saving.register_keras_serializable(package="keras_adapters")
class QuestionAnsweringHead(keras.layers.Layer):
    """Answer start and end probabilities over each window's tokens.

    Args:
        dropout: dropout before the dense layer.
        sequence_length: the tokens per window this task was trained with.
        stride: tokens neighbouring windows of a long context share
            (`qa_data.QuestionWindows`; `None`: its default); recorded so
            prediction and serving cut contexts as training did.
        max_answer_length: the longest answer, in tokens, predictions pick.
        max_question_length: question tokens kept (`None`: the default).
        num_classes, class_names: always 2, `["start", "end"]` (the two
            distributions); accepted so task records read like the others.
        task: `"question_answering"`.
        pooling: unused by this head (see `TokenClassificationHead`).

    Probabilities are float32 `[batch, 2, length]`: row 0 the start, row 1
    the end, each a softmax over the tokens the padding mask keeps, so the
    labels `[batch, 2]` (start and end token) train it with plain sparse
    cross-entropy.

    Example:
    ```python
    head = QuestionAnsweringHead(stride=96)
    head.build(hidden_dim=384)
    probabilities = head(sequence_output, pooled_output, padding_mask)
    ```
    """

    text_inputs = 2
    NAMES = ["start", "end"]

    def __init__(self, dropout=0.1, sequence_length=None, stride=None, max_answer_length=30,
                 max_question_length=None, num_classes=2, class_names=None,
                 task=QUESTION_ANSWERING, pooling=None, **kwargs):
        super().__init__(**kwargs)
        if str(task).replace("-", "_") != QUESTION_ANSWERING:
            raise ValueError(f"A QuestionAnsweringHead answers questions, not {task!r}.")
        if num_classes != 2 or class_names not in (None, self.NAMES):
            raise ValueError(f"A question-answering head has the 2 outputs {self.NAMES}, got {num_classes!r}.")
        for key, value, least in (("stride", stride, 0), ("max_answer_length", max_answer_length, 1),
                                  ("max_question_length", max_question_length, 1)):
            if value is None and key != "max_answer_length":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"{key} must be an integer >= {least}, got {value!r}.")
        if pooling is not None and pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS} or None, got {pooling!r}.")
        self.task, self.pooling = QUESTION_ANSWERING, pooling
        self.num_classes, self.class_names = 2, list(self.NAMES)
        self.sequence_length, self.dropout_rate = sequence_length, dropout
        self.stride, self.max_answer_length, self.max_question_length = stride, max_answer_length, max_question_length
        self.dropout, self.logits = dropout_and_logits(self, 2, dropout)

    def build(self, hidden_dim):
        self.logits.build((None, None, int(hidden_dim)))
        self.built = True

    def call(self, sequence_output, pooled_output, padding_mask, training=None):
        logits = ops.cast(self.logits(self.dropout(sequence_output, training=training)), "float32")
        logits = ops.where(ops.expand_dims(padding_mask, -1), logits, -1e9)
        return ops.softmax(ops.transpose(logits, (0, 2, 1)), axis=-1)

    weights_by_key = ClassificationHead.weights_by_key
    label_names = ClassificationHead.label_names

    def task_config(self):
        return {
            **ClassificationHead.task_config(self),
            "stride": self.stride,
            "max_answer_length": self.max_answer_length,
            "max_question_length": self.max_question_length,
        }

    def compute_output_shape(self, sequence_shape, pooled_shape, mask_shape):
        return (sequence_shape[0], 2, sequence_shape[1])

    def get_config(self):
        config = super().get_config()
        config.update(self.task_config())
        return config



def answer_report(model, data, batch_size=32):
    """SQuAD v1.1 exact match and F1 (0-100, `answer_metrics`) of a
    question-answering model on a SQuAD file, each question scored against
    all its reference answers; `num_examples` counts questions."""
    examples = qa_data.read_squad(data)
    found = answer_examples(model, examples, batch_size=batch_size)
    predictions = {e["id"]: f["answer"] for e, f in zip(examples, found)}
    references = {e["id"]: [a["text"] for a in e["answers"]] for e in examples}
    return answer_metrics.squad_scores(predictions, references)



def format_answer_report(result):
    return (
        f"questions {result['num_examples']}   exact match {result['exact_match']:.2f}   "
        f"F1 {result['f1']:.2f}"
    )


def windows(model):
    """The `data.QuestionWindows` the active head was trained with."""
    head = model.output_head
    return qa_data.QuestionWindows(
        model.preprocessor.tokenizer, model.sequence_length, head.stride, head.max_question_length
    )


def answer_examples(model, examples, batch_size=32, max_answer_length=None):
    """The best answer to each `data.read_squad` example, in their order."""
    head = model.output_head
    windowed = qa_data.window_dataset(examples, windows(model), with_offsets=True).batch(batch_size).cache()
    batches = [o for _, _, o in windowed]  # fills the cache; its size tells predict the steps
    offsets = {k: np.concatenate([o[k].numpy() for o in batches]) for k in ("starts", "ends", "example")}
    inputs = windowed.map(lambda x, y, o: x).apply(tf.data.experimental.assert_cardinality(len(batches)))
    probabilities = model.predict(inputs, verbose=0)
    reader = qa_data.GraphAnswers(max_answer_length or head.max_answer_length)
    found = reader(
        tf.constant([e["context"] for e in examples]), probabilities,
        offsets["starts"], offsets["ends"], offsets["example"],
    )
    return [
        {"answer": a.decode("utf-8", errors="replace"), "start": int(s), "end": int(e), "score": float(p)}
        for a, s, e, p in zip(*(found[k].numpy() for k in ("answer", "start", "end", "score")))
    ]


class AnswerServing(TaskServing):
    """A question-answering adapter's functions: (question, context) -> the
    best answer (`qa_data.QuestionWindows` and `qa_data.GraphAnswers`, as
    `answer`). Routed, each question is windowed with its adapter's sequence
    length, stride and question length, and its answer is at most its
    adapter's `max_answer_length` tokens."""

    text_signature = [tf.TensorSpec([None], tf.string, name="question"), tf.TensorSpec([None], tf.string, name="context")]

    def __init__(self, model, length, router=None):
        super().__init__(model, length, router)
        tokenizer = model.preprocessor.tokenizer
        settings = [(n, h.stride, h.max_question_length) for n, h in zip(self.lengths, self.heads)]
        distinct, index = settings_index(settings)
        self.setting = tf.constant(index, tf.int32)
        self.windows = [qa_data.QuestionWindows(tokenizer, *s) for s in distinct]
        self.max_answer = tf.constant([h.max_answer_length for h in self.heads], tf.int32)
        self.answers = qa_data.GraphAnswers(max(h.max_answer_length for h in self.heads))

    def serve_text(self, *inputs):
        (question, context), ids = self.route(inputs, tf.size(tf.reshape(inputs[0], [-1])))
        question, context = tf.reshape(question, [-1]), tf.reshape(context, [-1])
        check = tf.debugging.assert_equal(
            tf.size(question), tf.size(context),
            message="question and context need the same number of rows (one question per context)",
        )
        rows = tf.size(question)
        with tf.control_dependencies([check]):
            # One empty row more: an empty request runs the same ops as any other.
            ids = tf.concat([ids, [0]], 0)
            cut = data_lib.BYTES_PER_TOKEN * tf.gather(self.lengths, ids)
            question = data_lib.clean_text(tf.strings.substr(tf.concat([question, [""]], 0), 0 * cut, cut))
            context = data_lib.clean_text(tf.concat([context, [""]], 0))
        spec = tf.RaggedTensorSpec([None, self.length], tf.int32, ragged_rank=0)
        # Each question's windows ([k, length], k varying) -> ragged [questions, k, length].
        windows = tf.map_fn(
            lambda row: self._window_rows(*row), (question, context, tf.gather(self.setting, ids)),
            fn_output_signature=(spec, spec, tf.RaggedTensorSpec([None, self.length], tf.bool, ragged_rank=0),
                                 spec, spec),
        )
        token_ids, segment_ids, padding_mask, starts, ends = (w.values for w in windows)
        example = tf.cast(windows[0].value_rowids(), tf.int32)
        tokens = {"token_ids": token_ids, "segment_ids": segment_ids, "padding_mask": padding_mask}
        window_ids = tf.gather(ids, example)
        # Padded back to the windows' width: the cut columns are padding, where the head's softmax is 0.
        probabilities = self.run_cut(tokens, window_ids, token_axis=2)
        found = self.answers(context, probabilities, starts, ends, example, tf.gather(self.max_answer, window_ids))
        return {k: v[:rows] for k, v in found.items()}

    def _window_rows(self, question, context, setting):
        def windows_of(windows):
            def make():
                inputs, _, offsets = windows(question, context)
                pad = [[0, 0], [0, self.length - windows.length]]
                return tuple(tf.pad(t, pad, constant_values=fill) for t, fill in (
                    (inputs["token_ids"], windows.ids["pad"]), (inputs["segment_ids"], 0),
                    (inputs["padding_mask"], False), (offsets["starts"], -1), (offsets["ends"], -1)))
            return make

        if len(self.windows) == 1:
            return windows_of(self.windows[0])()
        return tf.switch_case(setting, [windows_of(w) for w in self.windows])


class QuestionAnswering(Task):
    """The answer's span in a context, from SQuAD v1.1 JSON."""

    name = QUESTION_ANSWERING
    head_class = QuestionAnsweringHead
    head_settings = QA_SETTINGS
    input_fields = ("question", "context")
    signature_verb = "answer"
    routable = True
    served_outputs = "answer, start, end, score"
    unit = "article"
    token_outputs = True
    #: A long context is split into several windows, each a training row
    #: (a private run reads one window per question: `private_data_options`).
    privacy_unit = "window"
    private_data_options = {"answer_window_only": True}
    #: Trains in autocast_bfloat16 on bf16 CPUs (float32 residual stream),
    #: not Keras' mixed_bfloat16: on SQuAD autocast scored as float32 (F1
    #: 54.6 against 54.7) in 27% less CPU time (BENCHMARKS.md).
    bf16_safe = False
    data_formats = "SQuAD v1.1 JSON (question-answering)"

    def make_head(self, record, **layer_kwargs):
        record = {**record, "num_classes": 2 if record.get("num_classes") is None else record["num_classes"]}
        return super().make_head(record, **layer_kwargs)

    def new_head_record(self, base, given, settings):
        return super().new_head_record(base, {**given, "num_classes": 2}, settings)

    def check_labels(self, y, x, num_classes, class_names=None, source="y"):
        width = np.shape(tf.nest.flatten(x)[0])[-1]  # start and end token positions
        check_labels(np.asarray(y), width, source="y (start and end tokens)")

    def check_inputs(self, x, adapter):
        raise ValueError(
            f"Adapter {adapter!r} answers questions: ask with "
            "model.answer(questions, contexts); fit and evaluate on ka.question_dataset_from_file(...) "
            "or on token inputs."
        )

    def detect(self, path, options):
        return not isinstance(path, str) and path.suffix.lower() == ".json" and looks_like_squad(path)

    def check_data(self, data):
        if not tf.io.gfile.exists(str(data)) or tf.io.gfile.isdir(str(data)):
            raise ValueError(f"Question answering reads a SQuAD v1.1 JSON file; {str(data)!r} is not a file.")

    def datasets(self, data, preprocessor, validation_split, **options):
        names = (*QA_DATA_OPTIONS, "batch_size", "seed", "shuffle", "cache", "answer_window_only")
        kept = {k: options[k] for k in names if k in options}
        read = qa_data.question_dataset_from_file
        if not validation_split:
            return read(data, preprocessor, **kept), None
        return read(data, preprocessor, validation_split=validation_split, subset="both", **kept)

    def count_examples(self, data, options):
        return len({e["title"] for e in qa_data.read_squad(data)})

    def head_options(self, train, options):
        settings = {"stride": train.stride, "max_question_length": train.max_question_length}
        settings.update({k: options[k] for k in ("max_answer_length",) if options.get(k) is not None})
        return settings

    def evaluate(self, model, data, batch_size=32, **options):
        return answer_report(model, data, batch_size=batch_size)

    def format_report(self, report):
        return format_answer_report(report)

    def read_inputs(self, path, options):
        """A SQuAD .json file, or a .jsonl, .csv or .tsv file with question and context columns."""
        if str(path).lower().endswith(".json"):
            examples = qa_data.read_squad(path, labelled=False)
            return [[e["question"] for e in examples], [e["context"] for e in examples]]
        if str(path) == "-":
            raise ValueError("This run answers questions: pass --file with a SQuAD .json file or a .jsonl, "
                             ".csv or .tsv file with question and context columns.")
        questions, contexts, _ = read_pairs(path, "question", "context", labelled=False)
        return [questions, contexts]

    def predict(self, model, columns, batch_size=32):
        questions, contexts = columns
        examples = [{"question": str(q), "context": str(c), "answers": []} for q, c in zip(questions, contexts)]
        found = answer_examples(model, examples, batch_size) if examples else []
        return [{"question": q, **f} for q, f in zip(questions, found)]

    def format_prediction(self, result):
        question = result["question"]
        shown = question if len(question) <= 70 else question[:67] + "..."
        return f"{result['answer'] or '-'}\t{result['score']:.4f}\t{shown}"

    def tflite_entry(self, head):
        # What a client needs to window questions and read answers as in training.
        return {**super().tflite_entry(head), **{k: getattr(head, k) for k in QA_SETTINGS}}

    def serving(self, model, length, router=None):
        return AnswerServing(model, length, router)


TASK = register_task(QuestionAnswering())
