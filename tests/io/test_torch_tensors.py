"""The `.bin` reader builds tensors and refuses everything else, without running it."""

import collections
import io
import os
import pickle
import pickletools
import sys
import types
import zipfile

import numpy as np
import pytest

from keras_adapters.io.torch_tensors import UnsafeFileError
from keras_adapters.io.torch_tensors import load_torch_tensors


class _FakeStorage:
    """Stands for a torch storage class while pickling (torch is not needed)."""


@pytest.fixture
def fake_torch(monkeypatch):
    """Modules named as torch's, so pickle records the same globals torch.save does."""
    torch, utils = types.ModuleType("torch"), types.ModuleType("torch._utils")

    def _rebuild_tensor_v2(*args):
        raise AssertionError("never called while writing")

    _rebuild_tensor_v2.__module__, _rebuild_tensor_v2.__qualname__ = "torch._utils", "_rebuild_tensor_v2"
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    for name in ("FloatStorage", "HalfStorage"):
        cls = type(name, (_FakeStorage,), {"__module__": "torch"})
        setattr(torch, name, cls)
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setitem(sys.modules, "torch._utils", utils)
    return torch, utils


class _Tensor:
    def __init__(self, storage_cls, key, array, size, stride, offset=0):
        self.storage_cls, self.key, self.array = storage_cls, key, array
        self.size, self.stride, self.offset = size, stride, offset


def _write(path, state, fake_torch):
    """A zip laid out as torch.save writes it (archive/data.pkl + archive/data/<key>)."""
    torch, utils = fake_torch
    storages = {}

    class Writer(pickle.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, tuple) and obj and obj[0] == "storage-ref":
                _, t = obj
                storages[t.key] = t.array
                return ("storage", t.storage_cls, t.key, "cpu", t.array.size)
            return None

        def reducer_override(self, obj):
            if isinstance(obj, _Tensor):
                return utils._rebuild_tensor_v2, (
                    ("storage-ref", obj), obj.offset, obj.size, obj.stride, False, collections.OrderedDict()
                )
            return NotImplemented

    buffer = io.BytesIO()
    Writer(buffer, protocol=2).dump(state)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", buffer.getvalue())
        for key, array in storages.items():
            z.writestr(f"archive/data/{key}", array.tobytes())


def test_tensors_are_read_with_their_shape_stride_and_dtype(tmp_path, fake_torch):
    a = np.arange(12, dtype=np.float32)
    h = np.arange(6, dtype=np.float16) / 4
    path = tmp_path / "pytorch_adapter.bin"
    torch, _ = fake_torch
    state = collections.OrderedDict(
        [
            ("a", _Tensor(torch.FloatStorage, "0", a, (3, 4), (4, 1))),
            ("a_t", _Tensor(torch.FloatStorage, "0", a, (4, 3), (1, 4))),  # a transposed view
            ("tail", _Tensor(torch.FloatStorage, "0", a, (2,), (1,), offset=10)),
            ("h", _Tensor(torch.HalfStorage, "1", h, (2, 3), (3, 1))),
        ]
    )
    _write(path, state, fake_torch)
    sys.modules.pop("torch"), sys.modules.pop("torch._utils")  # the reader must not need them
    got = load_torch_tensors(path)
    np.testing.assert_array_equal(got["a"], a.reshape(3, 4))
    np.testing.assert_array_equal(got["a_t"], a.reshape(3, 4).T)
    np.testing.assert_array_equal(got["tail"], a[10:])
    assert got["h"].dtype == np.float16
    np.testing.assert_array_equal(got["h"], h.reshape(2, 3))


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_pickle_that_runs_code_is_refused_and_does_not_run(tmp_path):
    marker = tmp_path / "payload_ran"
    path = tmp_path / "pytorch_adapter.bin"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps({"x": _Payload(marker)}, protocol=2))
    with pytest.raises(UnsafeFileError, match=r"pytorch_adapter.bin asks to run (posix|os)\.system"):
        load_torch_tensors(path)
    assert not marker.exists()
    # The same bytes do run when unpickled plainly: the test's payload is real.
    with zipfile.ZipFile(path) as z:
        pickle.loads(z.read("archive/data.pkl"))
    assert marker.exists()


def test_a_forged_stride_that_reaches_past_the_storage_is_refused(tmp_path, fake_torch):
    path = tmp_path / "pytorch_adapter.bin"
    a = np.zeros(4, np.float32)
    _write(path, {"a": _Tensor(fake_torch[0].FloatStorage, "0", a, (4, 4), (4, 1))}, fake_torch)
    with pytest.raises(UnsafeFileError, match="reaches past its storage"):
        load_torch_tensors(path)


@pytest.mark.parametrize("content", [b"not a zip", None])
def test_files_that_are_not_torch_zips_are_refused(tmp_path, content):
    path = tmp_path / "pytorch_adapter.bin"
    if content is None:
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("archive/other.txt", "x")
    else:
        path.write_bytes(content)
    with pytest.raises(UnsafeFileError, match="pytorch_adapter.bin"):
        load_torch_tensors(path)


def test_real_torch_save_files_read_as_torch_wrote_them(tmp_path):
    torch = pytest.importorskip("torch")
    state = {
        "w": torch.randn(5, 3),
        "t": torch.randn(3, 5).t(),
        "b16": torch.randn(4).to(torch.bfloat16),
        "i": torch.arange(7),
    }
    torch.save(state, tmp_path / "m.bin")
    got = load_torch_tensors(tmp_path / "m.bin")
    for key, value in state.items():
        np.testing.assert_array_equal(got[key], value.float().numpy() if key == "b16" else value.numpy())


def test_tensors_written_as_torch_save_lays_them_out_read_back_unchanged(tmp_path):
    from keras_adapters.io.torch_tensors import save_torch_tensors

    rng = np.random.default_rng(0)
    tensors = {"a.weight": rng.normal(size=(3, 4)), "b": rng.normal(size=5).astype(np.float32),
               "scalar": np.array(2.5), "transposed": rng.normal(size=(2, 3, 4)).transpose(2, 0, 1)}
    save_torch_tensors(tmp_path / "x.bin", tensors)
    back = load_torch_tensors(tmp_path / "x.bin")
    assert list(back) == list(tensors)
    for name, value in tensors.items():
        assert back[name].dtype == np.float32 and back[name].shape == value.shape
        np.testing.assert_array_equal(back[name], value.astype(np.float32))
    with zipfile.ZipFile(tmp_path / "x.bin") as z:
        assert z.read("archive/version") == b"3\n" and z.read("archive/byteorder") == b"little"
        globals_named = {a for op, a, _ in pickletools.genops(z.read("archive/data.pkl")) if op.name == "GLOBAL"}
    assert globals_named == {"collections OrderedDict", "torch._utils _rebuild_tensor_v2", "torch FloatStorage"}


def test_torch_reads_the_written_file_with_weights_only(tmp_path):
    torch = pytest.importorskip("torch")  # the torch-parity extra
    from keras_adapters.io.torch_tensors import save_torch_tensors

    tensors = {"w": np.arange(12, dtype=np.float32).reshape(3, 4).T, "s": np.array(1.5, np.float32)}
    save_torch_tensors(tmp_path / "x.bin", tensors)
    state = torch.load(tmp_path / "x.bin", weights_only=True)
    assert list(state) == ["w", "s"]
    for name, value in tensors.items():
        np.testing.assert_array_equal(state[name].numpy(), value)
