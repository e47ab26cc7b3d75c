"""Two local workers against one on BBC News: 200 training documents (40 per class, from
the demo's 80/20 split), Houlsby, 2 epochs, length 64; test accuracy on the held-out 20%.

    .venv/bin/python benchmarks/multi_worker_bbc.py NAME:BATCH:WORKERS ...
    e.g. one16:16:1 two16:16:2 one32:32:1   (one JSON line per run; results in BENCHMARKS.md)

Each run is `keras-adapters train` in its own process(es) (workers on localhost ports, TF_CONFIG)
followed by `keras-adapters evaluate`. Work files go to a temporary folder (KA_WORKDIR to keep them).
"""
import json, os, random, shutil, socket, subprocess, sys
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "examples"))
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
from bbc_news_demo import bbc_news_folder
from keras_adapters.io.text_data import split_directory

root = os.environ.get("KA_WORKDIR") or __import__("tempfile").mkdtemp(prefix="ka-multi-worker-")
if not os.path.isdir(f"{root}/train200"):
    train, test = split_directory(bbc_news_folder(), f"{root}/split", test_fraction=0.2, seed=0)
    rng = random.Random(0)
    for c in sorted(os.listdir(train)):
        files = sorted(os.listdir(os.path.join(train, c)))
        os.makedirs(f"{root}/train200/{c}")
        for f in rng.sample(files, 40):
            shutil.copy(os.path.join(train, c, f), f"{root}/train200/{c}/{f}")
test = f"{root}/split/test"
PY = sys.executable


def args(run, batch, strategy="default"):
    return ["-m", "keras_adapters.cli", "train", f"{root}/train200", "-o", run, "--method", "houlsby",
            "--epochs", "2", "--batch-size", str(batch), "--sequence-length", "64", "--quiet", "--strategy", strategy,
            "--overwrite"]


def ports(n):
    ss = [socket.socket() for _ in range(n)]
    for s in ss: s.bind(("localhost", 0))
    out = [s.getsockname()[1] for s in ss]
    for s in ss: s.close()
    return out


def run(name, batch, workers=1):
    out = f"{root}/runs/{name}"
    if workers == 1:
        subprocess.run([PY, *args(out, batch)], check=True, capture_output=True)
    else:
        cluster = {"worker": [f"localhost:{p}" for p in ports(workers)]}
        ps = [subprocess.Popen([PY, *args(out, batch, "multi-worker")], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               env={**os.environ, "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})})
              for i in range(workers)]
        for p in ps:
            o, e = p.communicate()
            assert p.returncode == 0, e.decode()[-2000:]
    r = subprocess.run([PY, "-m", "keras_adapters.cli", "evaluate", out, test, "--json"], capture_output=True, text=True, check=True)
    acc = json.loads(r.stdout)["accuracy"]
    h = json.load(open(f"{out}/history.json")); cfg = json.load(open(f"{out}/train_config.json"))
    print(json.dumps({"name": name, "test_accuracy": acc, "loss": h["loss"], "val_accuracy": h.get("val_accuracy"),
                      "batch_size": cfg["batch_size"], "num_replicas": cfg["num_replicas"],
                      "num_train": cfg["num_train_examples"]}), flush=True)


for spec in sys.argv[1:]:
    name, batch, workers = spec.split(":")
    run(name, int(batch), int(workers))
