"""The README's requests are test inputs: every `curl` body runs against a
SavedModel exported as the README's command before it says, in a fresh
process that loads it as TF Serving does, and gives the outputs its `# ->`
line names; the README's gRPC client runs unchanged against a gRPC
`PredictionService` serving the exported model."""

import json
import re
from concurrent import futures
from pathlib import Path

import grpc
import keras
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2
from tensorflow_serving.apis import prediction_service_pb2_grpc

import keras_adapters as ka
from conftest import randomize_adapter_weights
from conftest import serve_many

README = Path(__file__).resolve().parents[2] / "README.md"
NEWS = ["business", "entertainment", "politics", "sport", "tech"]
#: The README's models (the `--model_name`/folder its commands give) -> the
#: adapters the exported model serves: (name, task, classes).
MODELS = {
    "news": [("news", "text_classification", NEWS)],
    "tasks": [
        ("bbc", "text_classification", NEWS),
        ("sms", "text_classification", ["ham", "spam"]),
        ("trec", "text_classification", ["ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"]),
        ("wnut", "token_classification", ["O", "B-person", "I-person", "B-location", "I-location"]),
        ("conll", "token_classification", ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC"]),
    ],
}


def readme_requests(text):
    """Each `curl -d '<body>' .../v1/models/<model>...:predict` with the
    output names of the `# ->` line after it: [(model, body, outputs)]."""
    found = []
    pattern = r"curl -d '(.*?)' \\\s*\n\s*http://localhost:8501/v1/models/(\w+)[^\s]*:predict\n((?:#[^\n]*\n)*)"
    for body, model, comment in re.findall(pattern, text, flags=re.S):
        arrow = comment[comment.index("# ->"):] if "# ->" in comment else ""
        outputs = set(re.findall(r'"(\w+)":', arrow)) - {"predictions"}
        found.append((model, json.loads(body), outputs))
    return found


def readme_client(text):
    """The README's Python gRPC client block."""
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    return next(b for b in blocks if "prediction_service_pb2_grpc" in b)


def test_the_readme_has_the_requests_this_test_runs():
    requests = readme_requests(README.read_text())
    assert [(model, body.get("signature_name", "serving_default")) for model, body, _ in requests] == [
        ("news", "serving_default"), ("tasks", "classify"), ("tasks", "tag")]
    assert all(outputs for _, _, outputs in requests)


def _model(preset, adapters):
    keras.utils.set_random_seed(0)
    (_, _, classes), rest = adapters[0], adapters[1:]
    model = ka.AdapterModel.from_preset(preset, num_classes=len(classes), class_names=classes,
                                        method="houlsby", sequence_length=16)
    for name, task, classes in rest:
        model.add_adapter(name, "houlsby", task=task, class_names=classes,
                          **({"num_classes": len(classes)} if task == "text_classification" else {}))
    randomize_adapter_weights(model.backbone, scale=0.3)
    return model


@pytest.fixture(scope="module")
def exported(tiny_preset, tmp_path_factory):
    """{model name: its SavedModel version folder}, exported as the README says."""
    folder = tmp_path_factory.mktemp("readme_models")
    single = _model(tiny_preset, MODELS["news"])
    tasks = _model(tiny_preset, [("default", "text_classification", NEWS)] + MODELS["tasks"])
    return {
        "news": ka.export_saved_model(single, str(folder / "news")),
        "tasks": ka.export_multi_adapter_saved_model(
            tasks, str(folder / "tasks"), names=[name for name, _, _ in MODELS["tasks"]]),
    }


def _columns(instances):
    """TF Serving's row format ("instances": one object per row) as its columnar inputs."""
    return {key: [row[key] for row in instances] for key in instances[0]}


def test_every_readme_request_body_runs_against_its_export(exported, tmp_path):
    requests = readme_requests(README.read_text())
    for model, body, outputs in requests:
        [response] = serve_many(exported[model], [{
            "signature": body.get("signature_name", "serving_default"),
            "inputs": _columns(body["instances"]),
        }], tmp_path, loader="session")
        assert "error" not in response, (model, body, response)
        assert set(response["outputs"]) == outputs, (model, body)
        assert len(next(iter(response["outputs"].values()))) == len(body["instances"])


class _PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    """A gRPC `PredictionService` answering `Predict` from one SavedModel, as
    TF Serving does (its other methods answer UNIMPLEMENTED)."""

    def __init__(self, name, saved_model_dir):
        self.name, self.loaded = name, tf.saved_model.load(saved_model_dir)

    def Predict(self, request, context):  # noqa: N802 (the proto's method name)
        if request.model_spec.name != self.name:
            context.abort(grpc.StatusCode.NOT_FOUND, f"Servable not found for request: {request.model_spec.name}")
        signature = self.loaded.signatures[request.model_spec.signature_name or "serving_default"]
        inputs = {k: tf.constant(tf.make_ndarray(v)) for k, v in request.inputs.items()}
        response = predict_pb2.PredictResponse(model_spec=request.model_spec)
        for key, value in signature(**inputs).items():
            response.outputs[key].CopyFrom(tf.make_tensor_proto(value.numpy()))
        return response


def test_the_readme_grpc_client_runs_against_the_export(exported, capsys):
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    service = _PredictionService("tasks", exported["tasks"])
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(service, server)
    port = server.add_insecure_port("localhost:0")
    server.start()
    try:
        code = readme_client(README.read_text())
        assert "localhost:8500" in code
        namespace = {}
        exec(code.replace("localhost:8500", f"localhost:{port}"), namespace)
        printed = capsys.readouterr().out
        texts = ["Shares in the bank fell 5% after the results.", "Who wrote the novel Dune?"]
        expected = service.loaded.signatures["classify"](
            text=tf.constant(texts), adapter=tf.constant(["bbc", "trec"]))["label"].numpy()
        assert printed.strip() == str([label.decode() for label in expected])
        assert expected[0].decode() in NEWS and expected[1].decode() in MODELS["tasks"][2][2]
        with pytest.raises(grpc.RpcError, match="Servable not found"):
            namespace["classify"](texts, ["bbc", "trec"], server=f"localhost:{port}", model="news")
    finally:
        server.stop(None)
