"""TF Serving's warm-up file: `<version>/assets.extra/tf_serving_warmup_requests`.

TF Serving replays these requests when it loads a version and serves the
version only afterwards, so the first real requests do not pay for what a
first call costs (the tokenizer's tables, the graph's first run, oneDNN
building its kernels for each new shape). The file is a TFRecord file of
`PredictionLog` protos (`tensorflow-serving-api`), each a `PredictRequest`
naming a signature; TF Serving reads at most 1,000 of them.

Export writes, for every signature, a request of one row and one of
several (batch 1 and a small batch: the shapes online traffic has), from
real inputs: each run keeps a few of its training inputs
(`runs.folder.keep_examples`).
"""

import os

import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import model_pb2
from tensorflow_serving.apis import predict_pb2
from tensorflow_serving.apis import prediction_log_pb2

from keras_adapters.models.inputs import TOKEN_INPUTS

WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
#: TF Serving's limit on the records it reads.
MAX_RECORDS = 1000
#: The batch sizes of each signature's requests.
BATCH_SIZES = (1, 8)


def warmup_requests(signatures, rows, tokenize, model_name):
    """`PredictionLog`s: for each signature with rows, a request per batch size.

    Args:
        signatures: {signature key: concrete function}, as saved.
        rows: {signature key: [row]}: a row is {input name: text} (the
            task's fields, and `adapter` for a routed signature).
        tokenize: texts -> {"token_ids", "segment_ids", "padding_mask"}
            arrays, for signatures that take token ids (the first field of
            each row is tokenized).
        model_name: the `ModelSpec` name (TF Serving's model name).
    """
    logs = []
    for key, function in signatures.items():
        for batch in _batches(rows.get(key) or []):
            inputs = _inputs(_input_specs(function), batch, tokenize)
            logs.append(_log(model_name, key, inputs))
    if len(logs) > MAX_RECORDS:
        raise ValueError(
            f"{len(logs)} warm-up requests; TF Serving reads at most {MAX_RECORDS}. Export fewer signatures "
            "(--no-task-signatures) or pass warmup=False."
        )
    return logs


def write_warmup_file(version_dir, logs):
    """Write `logs` into `version_dir`'s `assets.extra/` (before the version is published)."""
    path = os.path.join(version_dir, WARMUP_FILE)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tf.io.TFRecordWriter(path) as writer:
        for log in logs:
            writer.write(log.SerializeToString())
    return path


def read_warmup_file(version_dir):
    """[(signature key, {input name: ndarray})] of a version's warm-up file,
    read as TF Serving reads it."""
    path = os.path.join(version_dir, WARMUP_FILE)
    out = []
    for record in tf.data.TFRecordDataset(path).as_numpy_iterator():
        log = prediction_log_pb2.PredictionLog.FromString(record)
        request = log.predict_log.request
        out.append((request.model_spec.signature_name,
                    {k: tf.make_ndarray(v) for k, v in request.inputs.items()}))
    return out


def _batches(rows):
    sizes = sorted({min(n, len(rows)) for n in BATCH_SIZES if rows})
    return [rows[:n] for n in sizes]


def _input_specs(function):
    args, kwargs = function.structured_input_signature
    return [*args, *kwargs.values()]


def _inputs(specs, batch, tokenize):
    names = [s.name for s in specs]
    tokens = tokenize([next(iter(row.values())) for row in batch]) if set(TOKEN_INPUTS) & set(names) else {}
    inputs = {}
    for spec in specs:
        if spec.name in TOKEN_INPUTS:
            inputs[spec.name] = np.asarray(tokens[spec.name]).astype(spec.dtype.as_numpy_dtype)
        else:
            inputs[spec.name] = np.array([row[spec.name].encode("utf-8") for row in batch], dtype=object)
    return inputs


def _log(model_name, signature, inputs):
    request = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(name=model_name, signature_name=signature))
    for name, value in inputs.items():
        request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
    return prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
