"""TensorFlow's start-up lines, kept quiet when `TF_CPP_MIN_LOG_LEVEL` asks.

TensorFlow 2.21 writes a few lines from C++ while it is imported ("All log
messages before absl::InitializeLog() ...", oneDNN, CUDA and CPU-feature
notes), before its logging has read `TF_CPP_MIN_LOG_LEVEL`, so the variable
does not silence them. `quiet_import` captures the process's stderr while
TensorFlow loads and writes back every line the level does not filter out
(warnings and errors stay, unless the level asks otherwise).

The command line is quiet by default (level 3); Python users get TensorFlow's
own default (level 0: nothing filtered).
"""

import contextlib
import os
import re
import sys
import tempfile

#: Severity letters of absl's log lines, in `TF_CPP_MIN_LOG_LEVEL` order.
_SEVERITIES = "IWEF"
_LOG_LINE = re.compile(r"^([IWEF])\d{4} ")
_INFO_LINES = (
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "To enable the following instructions:",  # the second line of cpu_feature_guard's note
)
_CLI_SCRIPTS = ("keras-adapters", os.path.join("keras_adapters", "cli.py"))


def is_cli():
    """True in the `keras-adapters` command (or `python -m keras_adapters.cli`)."""
    script = sys.argv[0] if sys.argv else ""
    # Under `-m`, argv[0] is "-m" while the package imports; the original command line has the module.
    argv = getattr(sys, "orig_argv", [])
    run_as_module = any(a == "-m" and b == "keras_adapters.cli" for a, b in zip(argv, argv[1:]))
    return run_as_module or any(script.endswith(name) for name in _CLI_SCRIPTS)


def log_level():
    """`TF_CPP_MIN_LOG_LEVEL` (set to 3 here for the command line if unset)."""
    if is_cli():
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        return int(os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0"))
    except ValueError:
        return 0


def filtered(text, level):
    """The lines of `text` that log level `level` keeps."""
    kept = []
    for line in text.splitlines(keepends=True):
        match = _LOG_LINE.match(line)
        if match and _SEVERITIES.index(match.group(1)) < level:
            continue
        if level >= 1 and line.startswith(_INFO_LINES):
            continue
        kept.append(line)
    return "".join(kept)


@contextlib.contextmanager
def quiet_import():
    """Hold back the start-up lines written to stderr inside this block."""
    level = log_level()
    if level < 1 or "tensorflow" in sys.modules:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            sys.stderr.write(filtered(capture.read().decode("utf-8", "replace"), level))
            sys.stderr.flush()
