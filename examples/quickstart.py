"""The API tour from the README, on a few bundled sentences (about a minute)."""

import os
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

import keras_adapters as ka  # noqa: E402

TEXTS = [
    "Shares in the bank fell after profits missed forecasts.",
    "The central bank raised interest rates again this quarter.",
    "The striker scored twice and the home side won the final.",
    "The coach praised the team after a hard-fought victory.",
    "The new phone has a faster chip and a better camera.",
    "Engineers released an update to the operating system.",
]
LABELS = np.array([0, 0, 1, 1, 2, 2])
CLASS_NAMES = ["business", "sport", "tech"]

model = ka.AdapterTextClassifier.from_preset(
    ka.default_preset(),
    num_classes=3,
    method="houlsby",
    sequence_length=64,
    class_names=CLASS_NAMES,
)
print(ka.parameter_report(model))
model.fit(TEXTS * 4, np.tile(LABELS, 4), epochs=5, batch_size=8)
expected = model.predict(TEXTS)
probs = model.predict(["Markets rallied as investors cheered the results."])
print("prediction:", CLASS_NAMES[int(probs.argmax())], probs.round(3))

folder = os.path.join(tempfile.mkdtemp(), "adapter")
model.save_adapter(folder)
again = ka.AdapterTextClassifier.from_adapter(folder)
same = np.array_equal(again.predict(TEXTS), expected)
size = os.path.getsize(os.path.join(folder, "adapter_model.safetensors"))
print(f"adapter folder {folder}: {size / 1e6:.2f} MB, reloaded predictions identical: {same}")

# Several named adapters on one backbone, each with its own head.
model.add_adapter("sentiment", "lora", num_classes=2, class_names=["negative", "positive"])
model.train_adapter("sentiment")  # only its LoRA weights and head train
model.compile()
model.fit(["A wonderful, moving film.", "Dull and far too long."] * 4, np.array([1, 0] * 4), epochs=3, verbose=0)
model.set_active_adapters(ka.Parallel("default", "sentiment"))  # one pass, both tasks
both = model.predict(["The team's new stadium is a triumph."], verbose=0)
print({name: probs.round(3).tolist() for name, probs in both.items()})
