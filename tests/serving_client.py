"""Run a SavedModel the way TF Serving would: only tensorflow + tensorflow_text.

    python serving_client.py SAVED_MODEL_DIR REQUEST.json RESPONSE.json [session]

With `session`, the SavedModel is loaded into a TF1 session, as TF Serving's
C++ loader does (graph + restore op), instead of `tf.saved_model.load`.

REQUEST: {"signature": name, "inputs": {name: list}, "dtypes": {name: dtype},
"shapes": {name: shape}} (dtypes and shapes optional),
or a list of them (one process, one load, several calls),
or {"warmup": true}: replay the version's `assets.extra/tf_serving_warmup_requests`
as TF Serving does when it loads a version (PredictionLog records parsed with the
tensorflow-serving-api protos); each response then names its signature and rows.
RESPONSE: {"outputs": {name: list}, "ops": [...], "foreign_modules": [...]};
for a list, {"responses": [{"outputs": ...} or {"error": message}], ...}:
an error of one call is reported, as a server would, and the next one runs.
"""

import json
import sys


class _Block:
    """Make keras-hub and keras-adapters unimportable: serving must not need them."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("keras_hub", "keras_adapters", "keras_nlp"):
            raise ImportError(f"{name} is blocked in the serving process")
        return None


sys.meta_path.insert(0, _Block())

import tensorflow as tf  # noqa: E402
import tensorflow_text  # noqa: E402,F401  (registers the tokenizer ops, as TF Serving builds do)


def graph_ops(saved_model_dir):
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    with open(f"{saved_model_dir}/saved_model.pb", "rb") as f:
        proto.ParseFromString(f.read())
    ops = set()
    for meta in proto.meta_graphs:
        ops |= {node.op for node in meta.graph_def.node}
        for fn in meta.graph_def.library.function:
            ops |= {node.op for node in fn.node_def}
    return sorted(ops)


def _inputs(request):
    inputs = {}
    for name, value in request["inputs"].items():
        dtype = request.get("dtypes", {}).get(name, "string")
        if dtype == "bytes_hex":
            inputs[name] = tf.constant([bytes.fromhex(v) for v in value])
        else:
            inputs[name] = tf.constant(value, dtype=dtype)
        if name in request.get("shapes", {}):  # an empty batch of token rows keeps its rank
            inputs[name] = tf.reshape(inputs[name], request["shapes"][name])
    return inputs


def _decoded(value):
    if isinstance(value, list):
        return [_decoded(v) for v in value]
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _listed(outputs):
    return {k: _decoded(v.tolist()) for k, v in outputs.items()}


class _Loaded:
    """`tf.saved_model.load`'s signatures."""

    def __init__(self, saved_model_dir):
        self.loaded = tf.saved_model.load(saved_model_dir)

    def __call__(self, request):
        outputs = self.loaded.signatures[request["signature"]](**_inputs(request))
        return _listed({k: v.numpy() for k, v in outputs.items()})


class _Session:
    """The SavedModel in a TF1 session: TF Serving's way of loading."""

    def __init__(self, saved_model_dir):
        self.session = tf.compat.v1.Session(graph=tf.Graph())
        self.meta = tf.compat.v1.saved_model.loader.load(self.session, ["serve"], saved_model_dir)

    def __call__(self, request):
        signature = self.meta.signature_def[request["signature"]]
        feed = {signature.inputs[k].name: v.numpy() for k, v in _inputs(request).items()}
        fetch = {k: v.name for k, v in signature.outputs.items()}
        return _listed(self.session.run(fetch, feed))


def warmup_requests(saved_model_dir):
    """The warm-up file's requests, as REQUESTs (tensors as lists, with their dtypes and shapes)."""
    from tensorflow_serving.apis import prediction_log_pb2

    requests = []
    path = f"{saved_model_dir}/assets.extra/tf_serving_warmup_requests"
    for record in tf.data.TFRecordDataset(path).as_numpy_iterator():
        request = prediction_log_pb2.PredictionLog.FromString(record).predict_log.request
        arrays = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
        requests.append({
            "signature": request.model_spec.signature_name,
            "model": request.model_spec.name,
            "inputs": {k: [x.hex() for x in v] if v.dtype == object else v.tolist() for k, v in arrays.items()},
            "dtypes": {k: "bytes_hex" if v.dtype == object else v.dtype.name for k, v in arrays.items()},
            "shapes": {k: list(v.shape) for k, v in arrays.items()},
        })
    return requests


def main(saved_model_dir, request_path, response_path, loader="function"):
    request = json.load(open(request_path))
    if isinstance(request, dict) and request.get("warmup"):
        request = warmup_requests(saved_model_dir)
    call = (_Session if loader == "session" else _Loaded)(saved_model_dir)
    response = {
        "ops": graph_ops(saved_model_dir),
        "foreign_modules": sorted(
            # (`import tensorflow` itself imports keras when it is installed.)
            {m.split(".")[0] for m in sys.modules} & {"keras_hub", "keras_adapters", "keras_nlp"}
        ),
    }
    if isinstance(request, list):
        response["responses"] = []
        for one in request:
            echo = {k: one[k] for k in ("signature", "model") if k in one}
            if "model" in one:  # a warm-up record: what it sent, decoded
                echo["inputs"] = {k: _decoded([bytes.fromhex(x) for x in v]) if one["dtypes"][k] == "bytes_hex"
                                  else v for k, v in one["inputs"].items()}
            try:
                response["responses"].append({**echo, "outputs": call(one)})
            except tf.errors.OpError as e:
                response["responses"].append({**echo, "error": e.message})
    else:
        response["outputs"] = call(request)
    json.dump(response, open(response_path, "w"))


if __name__ == "__main__":
    main(*sys.argv[1:5])
