"""TensorFlow's start-up lines: hidden by the CLI and by TF_CPP_MIN_LOG_LEVEL, shown otherwise."""

import os
import subprocess
import sys

import pytest

from keras_adapters import startup

TF_LINES = (
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
    "I0000 00:00:1796149612.323767   25760 port.cc:153] oneDNN custom operations are on.\n"
    "W0000 00:00:1796149612.324115   25760 cpu_feature_guard.cc:88] a warning\n"
    "To enable the following instructions: AVX512F, in other operations, rebuild TensorFlow.\n"
    "E0000 00:00:1796149612.324115   25760 some.cc:1] an error\n"
    "a line of the user's own\n"
)


@pytest.mark.parametrize(
    "level, kept",
    [
        (0, ["WARNING: All", "I0000", "W0000", "To enable", "E0000", "own"]),
        (1, ["W0000", "E0000", "own"]),
        (2, ["E0000", "own"]),
        (3, ["own"]),
    ],
)
def test_filtered_keeps_what_the_level_asks_for(level, kept):
    lines = startup.filtered(TF_LINES, level).splitlines()
    assert len(lines) == len(kept)
    assert all(line.startswith(k) or k in line for line, k in zip(lines, kept))


def _stderr_of(args, level):
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    if level is not None:
        env["TF_CPP_MIN_LOG_LEVEL"] = str(level)
    done = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stderr


def test_cli_start_up_is_quiet_without_any_setting():
    assert _stderr_of(["-m", "keras_adapters.cli", "train", "--help"], level=None) == ""


def test_import_is_quiet_at_level_3_and_shows_lines_at_level_0():
    importing = ["-c", "import keras_adapters, sys; sys.stderr.write('after import\\n')"]
    assert _stderr_of(importing, level=3) == "after import\n"
    loud = _stderr_of(importing, level=0)
    # TensorFlow writes its start-up notes on this machine; they must reach the user at level 0.
    assert "All log messages before absl::InitializeLog()" in loud and loud.endswith("after import\n")
