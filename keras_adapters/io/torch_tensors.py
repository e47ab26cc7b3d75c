"""Tensors from PyTorch `.bin` files, without running their pickle.

`torch.save` writes a zip: `<root>/data.pkl` (a pickle of the state dict)
and one file per storage under `<root>/data/`. A pickle can call any Python
function while it loads, so a `.bin` from elsewhere is a program. This
reader unpickles with a whitelist that only knows how tensors are rebuilt
(`torch._utils._rebuild_tensor_v2`, storage types, `OrderedDict`) and
builds NumPy arrays itself; any other global is refused before it is called.
PyTorch is not imported.
"""

import collections
import io
import pickle
import struct
import zipfile

import numpy as np

from keras_adapters.io.adapter_folder import AdapterFormatError

#: torch storage class -> NumPy dtype ("BFloat16" is widened to float32 on read).
STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "BFloat16Storage": "bfloat16",
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class UnsafeFileError(ValueError):
    """A `.bin` file holds something other than tensors, or is not a torch file."""


class _Storage:
    def __init__(self, name):
        self.name = name


def _rebuild_tensor_v2(storage, offset, size, stride, requires_grad=False, hooks=None, metadata=None):
    numbers = [offset, *size, *stride]
    if not isinstance(storage, np.ndarray) or not all(isinstance(n, int) and n >= 0 for n in numbers):
        raise UnsafeFileError(f"a tensor with storage {type(storage).__name__}, offset {offset!r}, size {size!r}")
    # as_strided does not check bounds: a forged size or stride would read other memory.
    last = offset + sum((n - 1) * s for n, s in zip(size, stride)) if all(size) else offset - 1
    if len(size) != len(stride) or last >= len(storage):
        raise UnsafeFileError(f"a tensor of size {size!r} and stride {stride!r} reaches past its storage")
    item = storage.itemsize
    return np.lib.stride_tricks.as_strided(
        storage[offset:], shape=tuple(size), strides=tuple(s * item for s in stride)
    ).copy()


def _rebuild_parameter(data, requires_grad=False, hooks=None):
    return data


_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
}


class _TensorUnpickler(pickle.Unpickler):
    def __init__(self, data, archive, root, source):
        super().__init__(io.BytesIO(data))
        self.archive, self.root, self.source = archive, root, source

    def find_class(self, module, name):
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "torch" and name in STORAGE_DTYPES:
            return _Storage(name)
        raise UnsafeFileError(
            f"{self.source} asks to run {module}.{name} while loading, which is not part of a tensor; "
            "refusing to load it (a PyTorch .bin file can run any code). Convert it to safetensors "
            "where you trust it, or ask its author for a safetensors file."
        )

    def persistent_load(self, pid):
        kind, storage, key, _location, numel = pid
        if kind != "storage" or not isinstance(storage, _Storage):
            raise UnsafeFileError(f"{self.source}: unexpected storage reference {pid!r}.")
        raw = self.archive.read(f"{self.root}/data/{key}")
        dtype = STORAGE_DTYPES[storage.name]
        if dtype == "bfloat16":  # bf16 is float32's upper half
            return (np.frombuffer(raw, np.uint16).astype(np.uint32) << 16).view(np.float32)[:numel]
        return np.frombuffer(raw, dtype)[:numel]


def load_torch_tensors(path):
    """{name: numpy array} from a `torch.save`d state dict, never running code.

    Raises:
        UnsafeFileError: the file is not a zip-format torch file, or its pickle
            names anything other than tensor-rebuilding functions.
    """
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise UnsafeFileError(
            f"{path} is not a PyTorch zip file ({e}); legacy (pre-1.6) torch files are not read, "
            "they can only be loaded by running their pickle."
        ) from None
    with archive:
        pickles = [n for n in archive.namelist() if n.endswith("/data.pkl")]
        if len(pickles) != 1:
            raise UnsafeFileError(f"{path} has no single <root>/data.pkl: not a torch.save file.")
        root = pickles[0][: -len("/data.pkl")]
        try:
            state = _TensorUnpickler(archive.read(pickles[0]), archive, root, path).load()
        except UnsafeFileError as e:
            raise UnsafeFileError(e.args[0] if str(path) in e.args[0] else f"{path}: {e.args[0]}") from None
        except Exception as e:  # a damaged pickle or zip member
            raise UnsafeFileError(f"{path} is not a readable torch file: {type(e).__name__}: {e}") from None
    if not isinstance(state, dict) or not all(isinstance(v, np.ndarray) for v in state.values()):
        raise UnsafeFileError(f"{path} does not hold a dict of tensors (a state dict).")
    return dict(state)


def read_tensor_file(directory, names, source):
    """{name: array} from the first of `names` (`.safetensors` or a torch `.bin`)
    in the `pathlib.Path` `directory`; a missing, unreadable or unsafe file is
    an `AdapterFormatError` naming it."""
    for name in names:
        path = directory / name
        if not path.is_file():
            continue
        try:
            if name.endswith(".bin"):
                return load_torch_tensors(path)
            from safetensors.numpy import load_file

            return load_file(str(path))
        except UnsafeFileError as e:
            raise AdapterFormatError(str(e)) from None
        except Exception as e:
            raise AdapterFormatError(f"{path} is not a readable safetensors file: {e}") from None
    raise AdapterFormatError(f"{source} has none of {list(names)}.")


def _global(module, name):
    return pickle.GLOBAL + f"{module}\n{name}\n".encode()


def _text(text):
    data = text.encode()
    return pickle.BINUNICODE + struct.pack("<I", len(data)) + data


def _tuple(items):
    return pickle.MARK + b"".join(items) + pickle.TUPLE


def _int(number):
    return pickle.BININT + struct.pack("<i", number)


def _ints(numbers):
    return _tuple(_int(n) for n in numbers)


def _tensor(key, array):
    """`torch._utils._rebuild_tensor_v2(storage, 0, shape, strides, False, OrderedDict())` as pickle opcodes."""
    strides = [s // array.itemsize for s in array.strides]
    storage = _tuple([_text("storage"), _global("torch", "FloatStorage"), _text(key), _text("cpu"),
                      _int(array.size)]) + pickle.BINPERSID
    hooks = _global("collections", "OrderedDict") + pickle.EMPTY_TUPLE + pickle.REDUCE
    return (_global("torch._utils", "_rebuild_tensor_v2") + pickle.MARK + storage + _int(0)
            + _ints(array.shape) + _ints(strides) + pickle.NEWFALSE + hooks + pickle.TUPLE + pickle.REDUCE)


def save_torch_tensors(path, tensors):
    """Write `tensors` ({name: array}, as float32) as `torch.save` writes a
    state dict, which `torch.load` (`weights_only=True` too) reads. The pickle is
    written opcode by opcode, naming only what the reader above accepts;
    PyTorch is not imported."""
    arrays = {name: np.array(value, dtype="<f4", order="C") for name, value in tensors.items()}  # "byteorder" says little
    body = [pickle.PROTO + b"\x02", _global("collections", "OrderedDict"), pickle.EMPTY_TUPLE, pickle.REDUCE, pickle.MARK]
    for key, (name, array) in enumerate(arrays.items()):
        body += [_text(name), _tensor(str(key), array)]
    body += [pickle.SETITEMS, pickle.STOP]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("archive/data.pkl", b"".join(body))
        archive.writestr("archive/byteorder", "little")
        for key, array in enumerate(arrays.values()):
            archive.writestr(f"archive/data/{key}", array.tobytes())
        archive.writestr("archive/version", "3\n")
