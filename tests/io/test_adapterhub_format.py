"""AdapterHub bottleneck adapters trained in PyTorch predict the same here.

The AdapterHub side runs in its own interpreter (`adapters` 1.3 needs
transformers 4.57): `scripts/setup_adapterhub.sh` makes `.venv-adapterhub`,
or set ADAPTERHUB_PYTHON; without one these tests are skipped.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import keras_adapters as ka

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS))
from adapterhub_side import TEST  # noqa: E402

CASES = {
    "seq_bn": ({"config": "seq_bn"}, {}),
    "double_seq_bn": ({"config": "double_seq_bn"}, {}),
    "par_bn": ({"config": "par_bn"}, {}),
    "seq_bn_gelu_some_layers_pooler_head": (
        {"config": "seq_bn", "non_linearity": "gelu", "reduction_factor": 8, "leave_out": [1, 4]},
        {"use_pooler": True, "layers": 1},
    ),
}
EXPECTED_METHOD = {"seq_bn": "pfeiffer", "double_seq_bn": "houlsby", "par_bn": "parallel"}


@pytest.fixture(scope="session")
def adapterhub_python():
    python = os.environ.get("ADAPTERHUB_PYTHON") or str(TESTS.parent / ".venv-adapterhub" / "bin" / "python")
    if not os.path.isfile(python):
        pytest.skip("no AdapterHub interpreter (scripts/setup_adapterhub.sh, or set ADAPTERHUB_PYTHON)")
    return python


def _train_in_adapterhub(python, preset, config, head, out):
    proc = subprocess.run(
        [python, str(TESTS / "adapterhub_side.py"), preset, json.dumps(config), json.dumps(head), str(out)],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return np.array(json.loads((out / "probabilities.json").read_text()))


@pytest.mark.parametrize("case", sorted(CASES))
def test_an_adapterhub_adapter_trained_in_pytorch_predicts_the_same(adapterhub_python, minilm_preset, tmp_path, case):
    config, head = CASES[case]
    expected = _train_in_adapterhub(adapterhub_python, minilm_preset, config, head, tmp_path)
    assert np.abs(expected - 1 / 3).max() > 0.05  # training moved the head off chance
    model = ka.AdapterModel.from_preset(minilm_preset, method=None, sequence_length=32)
    name = model.load_adapter(tmp_path / "adapter")
    model.set_active_adapters(name)
    assert model.state.configs[name].method == EXPECTED_METHOD[config["config"]]
    np.testing.assert_allclose(model.predict(TEST, verbose=0), expected, atol=1e-4)
