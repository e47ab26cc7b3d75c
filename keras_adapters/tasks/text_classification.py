"""Text classification: one label per text, from folders or TFDS."""

from itertools import zip_longest
from pathlib import Path

from keras_adapters.io import text_data as data_lib
from keras_adapters.tasks.base import SAMPLE_SIZE
from keras_adapters.tasks.base import TEXT_CLASSIFICATION
from keras_adapters.tasks.base import register_task
from keras_adapters.tasks.classification import ClassificationTask

#: Options only other tasks' readers take.
_OTHER_OPTIONS = ("text_a_key", "text_b_key", "stride", "max_question_length", "max_answer_length")


class TextClassification(ClassificationTask):
    """One label per text: a folder with a sub-folder of `.txt` files per
    class (`text_dataset_from_directory`), or `tfds:NAME`."""

    name = TEXT_CLASSIFICATION
    unit = "file"
    routable = True
    peft_task_type = "SEQ_CLS"  # BertForSequenceClassification: BERT's pooler, then the classifier
    adapterhub_head_type = "classification"
    data_formats = "a folder with one sub-folder per class of .txt files, or tfds:NAME (text-classification)"

    def detect(self, path, options):
        return isinstance(path, str) or path.is_dir()

    def check_data(self, data):
        if Path(str(data)).is_file():
            raise ValueError(
                f"{str(data)!r} is a file; text classification reads a folder with one sub-folder per class "
                "(or tfds:NAME). For a file of text pairs pass --task pair-classification."
            )

    def datasets(self, data, preprocessor, validation_split, **options):
        """For TFDS, the validation part is the last `validation_split` of the
        training split (`train[:90%]` / `train[90%:]`; `split=` changes the
        base split); for a folder, a seeded random part of its files."""
        refused = sorted(k for k in _OTHER_OPTIONS if options.get(k) is not None and "key" not in k)
        if refused:
            raise ValueError(f"{', '.join('--' + k.replace('_', '-') for k in refused)}: only for question answering.")
        options = {k: v for k, v in options.items() if k not in _OTHER_OPTIONS}
        if not str(data).startswith("tfds:"):
            options.pop("label_key", None)  # folders are labelled by sub-folder
            if validation_split:
                return data_lib.text_dataset_from_directory(
                    data, preprocessor, validation_split=validation_split, subset="both", **options
                )
            return data_lib.text_dataset_from_directory(data, preprocessor, **options), None
        split = options.pop("split", "train")
        if not validation_split:
            return data_lib.load_text_dataset(data, preprocessor, split=split, **options), None
        cut = int(round(100 * (1 - validation_split)))
        train = data_lib.load_text_dataset(data, preprocessor, split=f"{split}[:{cut}%]", **options)
        options.update(shuffle=False, class_names=train.class_names)
        return train, data_lib.load_text_dataset(data, preprocessor, split=f"{split}[{cut}%:]", **options)

    def count_examples(self, data, options):
        return sum(len(paths) for paths in data_lib.scan_directory(data).values())

    def sample_inputs(self, data, options, count=SAMPLE_SIZE):
        if str(data).startswith("tfds:"):
            return None
        per_class = list(data_lib.scan_directory(data).values())
        paths = [p for row in zip_longest(*per_class) for p in row if p][:count]  # each class in turn
        # (The served graph cuts a text to what its length uses; a file may be far longer.)
        return [[Path(p).read_text(encoding="utf-8", errors="replace")[:10_000] for p in paths]]

    def evaluation_dataset(self, model, data, batch_size, **options):
        options = {k: v for k, v in options.items() if k not in _OTHER_OPTIONS}
        return data_lib.load_text_dataset(
            data, model.preprocessor, batch_size=batch_size, shuffle=False, class_names=model.class_names, **options
        )


TASK = register_task(TextClassification())
