"""Folders (and TFDS datasets) of labelled text -> tokenized `tf.data` pipelines.

A directory dataset has one sub-folder per class and one text file per
example (the layout `keras.utils.text_dataset_from_directory` reads, which
does the file listing, the seeded split and the reading here). On top of it,
everything per example runs in the TensorFlow graph: invalid UTF-8 is
replaced, the text is tokenized by the model's keras-hub preprocessor inside
`map` (parallel calls), the tokenized examples are cached, shuffled each epoch,
batched and prefetched. No Python runs per example.

Documented behaviour for awkward input (all tested):
- a missing folder, a folder without class sub-folders, a single class, a
  class folder with no text files, a text file that is a broken symbolic
  link, or a validation split that would hold no file: `DatasetError` naming
  the folder (or file) and the fix;
- bytes that are not valid UTF-8: replaced by U+FFFD, the example is kept;
- empty (or whitespace-only) files: skipped, with a warning giving how many
  and one path, since an empty text carries no label evidence;
- very long files: only the first `max_bytes` bytes are read (default 64
  bytes per token of `sequence_length`, far more than the tokens kept), and
  the tokenizer truncates to `sequence_length`;
- evaluation folders map labels by class *name*: a folder may hold a subset
  of the run's classes, in any order; an unknown class name is an error.
"""

import os
import random
import shutil
import warnings
from pathlib import Path

import tensorflow as tf

AUTOTUNE = tf.data.AUTOTUNE
TEXT_SUFFIXES = (".txt",)
#: Bytes read per token of sequence length (English BERT tokens average ~5).
BYTES_PER_TOKEN = 64
DEFAULT_BUCKETS = (32, 64, 128, 256, 512)


class DatasetError(ValueError):
    """A dataset folder or source cannot be used; the message says why."""


def scan_directory(directory):
    """Check a directory dataset and list it: {class name: [file paths]}.

    Raises:
        DatasetError: missing folder, no class sub-folders, fewer than two
            classes, or a class folder without text files.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise DatasetError(
            f"Dataset folder {str(directory)!r} does not exist. Pass a folder "
            "with one sub-folder per class, each holding one .txt file per example."
        )
    class_dirs = sorted(p for p in directory.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise DatasetError(
            f"{str(directory)!r} has no class sub-folders. Put each class's .txt "
            "files in a sub-folder named after the class (e.g. data/sport/001.txt)."
        )
    files = {}
    empty = []
    for class_dir in class_dirs:
        texts = [p for p in class_dir.rglob("*") if p.suffix.lower() in TEXT_SUFFIXES]
        _refuse_broken_links(texts)
        found = sorted(str(p) for p in texts if p.is_file())
        if not found:
            empty.append(class_dir.name)
        files[class_dir.name] = found
    if empty:
        raise DatasetError(
            f"Class folder(s) {empty} in {str(directory)!r} contain no .txt files. "
            "Add examples or remove the folder(s)."
        )
    return files


def _refuse_broken_links(paths):
    # Keras' listing would keep them and fail on reading them, mid-epoch.
    broken = [p for p in paths if p.is_symlink() and not p.exists()]
    if broken:
        raise DatasetError(
            f"{len(broken)} text file(s) are symbolic links that lead nowhere (a missing target or a "
            f"loop), e.g. {str(broken[0])!r} -> {os.readlink(broken[0])!r}. Fix or remove the link(s)."
        )


def _check_classes(directory, folder_classes, class_names):
    if class_names is None:
        if len(folder_classes) < 2:
            raise DatasetError(
                f"{str(directory)!r} has a single class folder {folder_classes}; a "
                "classifier needs at least two classes."
            )
        return list(folder_classes)
    unknown = sorted(set(folder_classes) - set(class_names))
    if unknown:
        raise DatasetError(
            f"{str(directory)!r} has class folder(s) {unknown} that the model does not "
            f"know; its classes are {list(class_names)}."
        )
    return list(class_names)


def _count_empty_files(paths):
    empty = []
    for path in paths:
        try:
            if os.path.getsize(path) == 0 or not open(path, "rb").read(4096).strip():
                empty.append(path)
        except OSError as e:
            raise DatasetError(f"Cannot read {path}: {e}. Fix its permissions or remove it.") from e
    return empty


def class_prior(label_ids, num_classes):
    """Each class's share of `label_ids` (add-one smoothed, so a class without
    examples keeps a small share): where a head starts (`start_from_prior`)."""
    ids = [int(i) for i in label_ids]
    counts = [0] * num_classes
    for i in ids:
        counts[i] += 1
    return [(c + 1) / (len(ids) + num_classes) for c in counts]


def clean_text(text, max_bytes=None):
    """In-graph: cut to `max_bytes` and replace invalid UTF-8 with U+FFFD."""
    if max_bytes:
        text = tf.strings.substr(text, 0, max_bytes)
    return tf.strings.unicode_transcode(
        text,
        input_encoding="UTF-8",
        output_encoding="UTF-8",
        errors="replace",
        replacement_char=0xFFFD,
    )


def _tokenize_fn(preprocessor):
    def tokenize(text, label):
        # y=None: keras-hub would read a (text_a, text_b) tuple as (x, y).
        return preprocessor(text, y=None), label

    return tokenize


def finish_dataset(
    ds, preprocessor, batch_size, training, bucket_boundaries, cache, num_examples, seed, known_size=True
):
    """Tokenize (in graph), cache, shuffle, batch (optionally by length), prefetch.

    `ds` holds `(text, label)` or `((text_a, text_b), label)` elements.
    """
    ds = ds.map(_tokenize_fn(preprocessor), num_parallel_calls=AUTOTUNE)
    if cache:
        ds = ds.cache()
    if training:
        ds = ds.shuffle(max(1, num_examples), seed=seed, reshuffle_each_iteration=True)
    if bucket_boundaries:
        ds = bucket_by_length(ds, batch_size, bucket_boundaries, preprocessor.sequence_length)
    else:
        ds = ds.batch(batch_size)
        if known_size:
            # Filtering hides the size; it is known, so Keras can show steps.
            ds = ds.apply(tf.data.experimental.assert_cardinality(-(-num_examples // batch_size)))
    return ds.prefetch(AUTOTUNE)


def bucket_by_length(ds, batch_size, boundaries, sequence_length):
    """Batch examples of similar length and cut each batch's padding.

    Each batch is trimmed to the smallest boundary that fits its longest
    example, so the model sees only `len(boundaries)` shapes (few retraces)
    and short texts do not pay for `sequence_length` tokens of padding.
    """
    boundaries = sorted({b for b in boundaries if b < sequence_length})
    widths = tf.constant(boundaries + [sequence_length], tf.int32)

    def length(x, y):
        return tf.reduce_sum(tf.cast(x["padding_mask"], tf.int32))

    ds = ds.bucket_by_sequence_length(
        length,
        bucket_boundaries=[b + 1 for b in boundaries],
        bucket_batch_sizes=[batch_size] * (len(boundaries) + 1),
    )

    def trim(x, y):
        longest = tf.reduce_max(tf.reduce_sum(tf.cast(x["padding_mask"], tf.int32), axis=1))
        width = widths[tf.argmax(tf.cast(widths >= longest, tf.int32))]
        return {k: v[:, :width] for k, v in x.items()}, y

    return ds.map(trim, num_parallel_calls=AUTOTUNE)


def _checked_files(directory, paths, validation_split, subset):
    """The empty files among `paths` (with a warning); an error when all
    are empty or the validation split would hold none."""
    empty = _count_empty_files(paths)
    if empty:
        warnings.warn(
            f"Skipping {len(empty)} empty file(s) in {str(directory)!r} (e.g. {empty[0]}).",
            stacklevel=3,
        )
    if len(empty) == len(paths):
        raise DatasetError(f"Every file in {str(directory)!r} is empty.")
    if validation_split and subset in ("validation", "both") and not validation_size(len(paths), validation_split):
        raise DatasetError(
            f"A validation split of {validation_split} of the {len(paths)} files in {str(directory)!r} "
            "holds no file. Raise validation_split, add examples, or train without a split."
        )
    return empty


def text_dataset_from_directory(
    directory,
    preprocessor,
    batch_size=32,
    validation_split=None,
    subset=None,
    seed=None,
    class_names=None,
    shuffle=True,
    bucket_by_sequence_length=False,
    bucket_boundaries=DEFAULT_BUCKETS,
    cache=True,
    max_bytes=None,
):
    """A tokenized `tf.data.Dataset` of `(inputs, label)` batches from a folder.

    Builds on `keras.utils.text_dataset_from_directory` (file listing,
    seeded split, reading) and adds in-graph cleaning and tokenization,
    caching, per-epoch shuffling, optional length bucketing and prefetching.

    Args:
        directory: folder with one sub-folder per class.
        preprocessor: the model's keras-hub preprocessor
            (`model.preprocessor`); its `sequence_length` truncates.
        batch_size: examples per batch.
        validation_split: fraction held out (with `subset`), as in Keras.
        subset: `"training"`, `"validation"` or `"both"` (returns two).
        seed: seed of the split and the shuffling (required with a split).
        class_names: the run's class names, in label order. Given, the
            folder's classes are mapped to them by name (a subset is fine);
            `None`: the sorted sub-folder names.
        shuffle: shuffle every epoch (training subset only when splitting).
        bucket_by_sequence_length: batch similar lengths together and trim
            padding per batch (see `bucket_by_length`).
        bucket_boundaries: token widths for bucketing.
        cache: cache tokenized examples in memory after the first epoch.
        max_bytes: bytes read per file (default `64 * sequence_length`).

    Returns:
        A dataset (two for `subset="both"`) with a `class_names` attribute.

    Example:
    ```python
    train, val = text_dataset_from_directory(
        "bbc/train", model.preprocessor, validation_split=0.1,
        subset="both", seed=1)
    model.fit(train, validation_data=val, epochs=3)
    ```
    """
    import keras

    files = scan_directory(directory)
    names = _check_classes(directory, list(files), class_names)
    folder_classes = list(files)
    all_paths = [p for ps in files.values() for p in ps]
    # The whole folder's shares, from the listing (no file read): a random
    # split's parts differ from them only by sampling.
    prior = class_prior([names.index(c) for c, ps in files.items() for _ in ps], len(names))
    empty = _checked_files(directory, all_paths, validation_split, subset)
    if validation_split and seed is None:
        seed = 1337  # Keras requires a seed to split; fixed so runs repeat.
    max_bytes = max_bytes or BYTES_PER_TOKEN * int(preprocessor.sequence_length or 512)

    raw = keras.utils.text_dataset_from_directory(
        str(directory),
        labels="inferred",
        label_mode="int",
        class_names=folder_classes,
        batch_size=None,
        max_length=None,
        shuffle=bool(shuffle or validation_split),
        seed=seed,
        validation_split=validation_split,
        subset=subset,
        verbose=False,
    )
    raws = list(raw) if isinstance(raw, (list, tuple)) else [raw]
    # Folder order -> the run's label order, by name.
    remap = tf.constant([names.index(c) for c in folder_classes], tf.int32)
    sizes = _split_sizes(len(all_paths), validation_split, subset)
    outputs = []
    for part, size, is_training in zip(raws, sizes, training_flags(subset, shuffle)):
        part = part.map(
            lambda text, label: (clean_text(text, max_bytes), tf.gather(remap, label)),
            num_parallel_calls=AUTOTUNE,
        )
        part = part.filter(lambda text, label: tf.strings.length(tf.strings.strip(text)) > 0)
        ds = finish_dataset(
            part,
            preprocessor,
            batch_size,
            is_training,
            bucket_boundaries if bucket_by_sequence_length else None,
            cache,
            size,
            seed,
            known_size=not empty,
        )
        ds.class_names = names
        ds.num_examples = size
        ds.class_prior = prior
        outputs.append(ds)
    return tuple(outputs) if subset == "both" else outputs[0]


def validation_size(total, validation_split):
    """How many of `total` files a validation split holds (Keras' rounding: down)."""
    return int(validation_split * total) if validation_split else 0


def split_rows(count, validation_split, subset, seed, what, source):
    """Row indices of each requested part of `count` examples read from a file.

    A seeded random `validation_split` is held out (the same `seed`, the
    same split); `subset` is `"training"` (the default), `"validation"` or
    `"both"`. Without a split: every row, in order.

    Returns:
        A list of row-index lists, one per dataset to build.
    """
    order = list(range(count))
    if not validation_split:
        return [order]
    random.Random(1337 if seed is None else seed).shuffle(order)
    held = validation_size(count, validation_split)
    if not held and subset in ("validation", "both"):
        raise DatasetError(
            f"A validation split of {validation_split} of the {count} {what} in {source} holds none. "
            "Raise validation_split, add examples, or train without a split."
        )
    parts = {"validation": [order[:held]], "both": [order[held:], order[:held]]}
    return parts.get(subset, [order[held:]])


def _split_sizes(total, validation_split, subset):
    if not validation_split:
        return [total]
    num_val = validation_size(total, validation_split)
    if subset == "both":
        return [total - num_val, num_val]
    return [total - num_val if subset == "training" else num_val]


def training_flags(subset, shuffle):
    if subset == "both":
        return [shuffle, False]
    if subset == "validation":
        return [False]
    return [shuffle]


def tfds_text_dataset(
    name,
    preprocessor,
    split="train",
    text_key="text",
    label_key="label",
    batch_size=32,
    shuffle=True,
    seed=None,
    bucket_by_sequence_length=False,
    bucket_boundaries=DEFAULT_BUCKETS,
    cache=True,
    data_dir=None,
    class_names=None,
):
    """The same pipeline over a TensorFlow Datasets text-classification set.

    Args:
        name: TFDS name (`"imdb_reviews"`), or `"tfds:imdb_reviews"`.
        split: TFDS split string (`"train"`, `"train[:90%]"`, ...).
        text_key, label_key: feature names of the text and the class label.
        class_names: the run's classes; labels are mapped by name.
        Other arguments: as `text_dataset_from_directory`.

    Returns:
        A dataset with `class_names` (from the label feature's names).
    """
    import tensorflow_datasets as tfds

    name = name.removeprefix("tfds:")
    try:
        ds, info = tfds.load(name, split=split, with_info=True, data_dir=data_dir, download=False)
    except Exception as e:
        raise DatasetError(
            f"Could not load TFDS dataset {name!r} (split {split!r}): {e}. Nothing is "
            "downloaded at run time: prepare it beforehand into TFDS's data_dir."
        ) from e
    features = info.features
    for key in (text_key, label_key):
        if key not in features:
            raise DatasetError(
                f"TFDS dataset {name!r} has no feature {key!r}; its features are "
                f"{sorted(features.keys())}. Pass text_key= / label_key=."
            )
    label_feature = features[label_key]
    folder_classes = list(getattr(label_feature, "names", None) or [])
    if not folder_classes:
        raise DatasetError(f"TFDS feature {label_key!r} of {name!r} is not a ClassLabel.")
    names = _check_classes(name, folder_classes, class_names)
    remap = tf.constant([names.index(c) for c in folder_classes], tf.int32)
    size = int(ds.cardinality())
    if size < 0:  # unknown: size the shuffle buffer from the split's metadata
        size = int(info.splits[split].num_examples) if split in info.splits else 10_000
    max_bytes = BYTES_PER_TOKEN * int(preprocessor.sequence_length or 512)
    ds = ds.map(
        lambda ex: (
            clean_text(ex[text_key], max_bytes),
            tf.gather(remap, tf.cast(ex[label_key], tf.int32)),
        ),
        num_parallel_calls=AUTOTUNE,
    )
    ds = finish_dataset(
        ds,
        preprocessor,
        batch_size,
        shuffle,
        bucket_boundaries if bucket_by_sequence_length else None,
        cache,
        size,
        seed,
        known_size=False,  # nothing is filtered: tf.data keeps the cardinality
    )
    ds.class_names = names
    ds.num_examples = size
    return ds


def load_text_dataset(source, preprocessor, **kwargs):
    """`tfds:NAME` goes to `tfds_text_dataset`, anything else is a folder."""
    if str(source).startswith("tfds:"):
        for key in ("validation_split", "subset", "max_bytes"):
            if kwargs.pop(key, None):
                raise DatasetError(f"{key} is not supported for TFDS sources; use split=.")
        return tfds_text_dataset(source, preprocessor, **kwargs)
    for key in ("split", "text_key", "label_key", "data_dir"):
        kwargs.pop(key, None)
    return text_dataset_from_directory(source, preprocessor, **kwargs)


def split_directory(source, destination, test_fraction=0.2, seed=0, link=False):
    """Write a stratified train/test split of a directory dataset to disk.

    Each class's files are shuffled with `seed` and the last
    `round(test_fraction * n)` (at least one) go to `destination/test/<class>/`,
    the rest to `destination/train/<class>/`. Files are copied (or
    symlinked with `link=True`), names kept.

    Returns:
        (train folder, test folder).
    """
    if not 0.0 < test_fraction < 1.0:
        raise DatasetError(f"test_fraction must be in (0, 1), got {test_fraction}.")
    files = scan_directory(source)
    _check_classes(source, list(files), None)
    destination = Path(destination)
    train_dir, test_dir = destination / "train", destination / "test"
    for folder in (train_dir, test_dir):
        if folder.exists():
            raise DatasetError(
                f"{folder} already exists; choose a new destination or remove it."
            )
    rng = random.Random(seed)
    for class_name, paths in files.items():
        if len(paths) < 2:
            raise DatasetError(
                f"Class {class_name!r} has {len(paths)} file(s); a split needs at least 2."
            )
        paths = list(paths)
        rng.shuffle(paths)
        num_test = min(len(paths) - 1, max(1, round(test_fraction * len(paths))))
        for part, chosen in ((test_dir, paths[:num_test]), (train_dir, paths[num_test:])):
            target = part / class_name
            target.mkdir(parents=True, exist_ok=True)
            for path in chosen:
                relative = Path(path).relative_to(Path(source) / class_name)
                out = target / str(relative).replace(os.sep, "__")
                if link:
                    os.symlink(os.path.abspath(path), out)
                else:
                    shutil.copyfile(path, out)
    return str(train_dir), str(test_dir)
