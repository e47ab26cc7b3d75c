"""The package's rules (architecture.md), checked on its source: imports go
down the floors only, only `tasks/` tells tasks apart, no module reaches into
another's private names."""

import ast
from pathlib import Path

import keras_adapters as ka

PACKAGE = Path(ka.__file__).parent
#: Floors, lowest first: a module imports only from its own floor and below.
FLOORS = ["version", "startup", "backbones", "methods", "core", "io", "tasks", "models", "runs", "serving", "cli", "__init__"]
TASK_CONSTANTS = {"TEXT_CLASSIFICATION", "PAIR_CLASSIFICATION", "TOKEN_CLASSIFICATION", "QUESTION_ANSWERING",
                  "CAUSAL_LM", "NAME"}
#: Private names of other libraries used on purpose (each with its reason where it is used).
THIRD_PARTY_PRIVATE = {
    "_tracker", "_save_state", "_keras_adapters_multi_worker", "_maybe_symbolic_build", "_initial_epoch",
    # Keras' walk over nested layers, and the MultiHeadAttention internals the served
    # graph's fused self-attention reads (serving/graph.py checks they exist).
    "_flatten_layers", "_inverse_sqrt_key_dim", "_query_dense", "_output_dense", "_compute_attention_mask",
    "_masked_softmax", "_dropout",
    # keras-hub's TransformerEncoder sublayers the served graph's 2-D encoder call
    # reads (serving/graph.py checks they exist).
    "_self_attention_layer", "_self_attention_layer_norm", "_self_attention_dropout", "_feedforward_layer_norm",
    "_feedforward_output_dense", "_feedforward_dropout",
    # The loss metric Keras' own train_step updates; DP-SGD's step (core/dp_sgd.py) replaces that step.
    "_loss_tracker",
    # The feed-forward layer whose activation a BERT checkpoint fixes (backbones/bert.py).
    "_feedforward_intermediate_dense",
    # Keras' build of the optimizer and metrics before the first trace, from the epoch
    # iterator's dataset (models/tracing.py).
    "_symbolic_build", "_distributed_dataset",
}


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        yield path, parts, ast.parse(path.read_text())


def _floor(parts):
    return FLOORS.index(parts[0] if parts and parts[0] != "__init__" else "__init__")


def _imported(tree):
    """(line, [dotted module parts below keras_adapters]) of each import."""
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "keras_adapters":
            base = node.module.split(".")[1:]
            for alias in node.names:
                yield node.lineno, base or [alias.name], alias


def upward_imports(modules):
    return [
        f"{'/'.join(parts)}.py:{line} imports keras_adapters.{'.'.join(target)}"
        for path, parts, tree in modules
        for line, target, _ in _imported(tree)
        if _floor(target) > _floor(parts)
    ]


def task_comparisons(modules, names):
    found = []
    for path, parts, tree in modules:
        if parts[0] == "tasks":
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Compare) and any(
                (isinstance(sub, ast.Attribute) and sub.attr in TASK_CONSTANTS)
                or (isinstance(sub, ast.Constant) and sub.value in names)
                for operand in (node.left, *node.comparators)
                for sub in ast.walk(operand)
            ):
                found.append(f"{'/'.join(parts)}.py:{node.lineno}")
    return found


def _own_private_names(tree):
    """Private names a module defines (functions, classes, attributes it sets)."""
    own = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            own.add(node.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            own.add(node.attr)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            own.add(node.id)
    return {n for n in own if n.startswith("_")}


def private_uses(modules):
    found = []
    for path, parts, tree in modules:
        own = _own_private_names(tree)
        found += [
            f"{'/'.join(parts)}.py:{line} imports {alias.name}"
            for line, target, alias in _imported(tree)
            if alias.name.startswith("_") and not alias.name.startswith("__")
        ]
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
                and node.attr not in THIRD_PARTY_PRIVATE | own
                and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))
            ):
                found.append(f"{'/'.join(parts)}.py:{node.lineno} uses .{node.attr}")
    return found


def test_imports_only_go_down_the_floors():
    assert upward_imports(list(_modules())) == []


def test_only_tasks_tell_tasks_apart():
    """No comparison with a task (`head.task == tasks.QUESTION_ANSWERING`,
    `task in ("token_classification", ...)`) outside `tasks/`: ask the task."""
    assert task_comparisons(list(_modules()), set(ka.tasks.available_tasks())) == []


def test_no_module_uses_another_modules_private_names():
    assert private_uses(list(_modules())) == []


def test_the_checks_can_fail():
    """Each rule, fed a module that breaks it, reports it."""
    bad = ast.parse(
        "from keras_adapters.serving import export\n"
        "from keras_adapters.core.injection import _private\n"
        "if head.task == tasks.QUESTION_ANSWERING or x in ('token_classification',):\n    pass\n"
        "model._output_head()\n"
    )
    modules = [(None, ("core", "bad"), bad)]
    assert upward_imports(modules) == ["core/bad.py:1 imports keras_adapters.serving"]
    assert task_comparisons(modules, {"token_classification"}) == ["core/bad.py:3", "core/bad.py:3"]  # both
    assert private_uses(modules) == ["core/bad.py:2 imports _private", "core/bad.py:5 uses ._output_head"]


def test_tests_mirror_the_package_folders():
    """tests/<floor>/ holds the tests of keras_adapters/<floor>/; the end-to-end
    and package-wide tests stay at the top."""
    tests = Path(__file__).parent
    folders = {p.name for p in tests.iterdir() if p.is_dir() and p.name not in ("data", "__pycache__")}
    floors = {p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert folders <= floors, sorted(folders - floors)
    loose = sorted(p.name for p in tests.glob("test_*.py"))
    assert loose == ["test_architecture.py", "test_bbc_news.py", "test_cli.py", "test_startup.py"]
