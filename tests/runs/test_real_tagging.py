"""Adapters learn real tagging at the CLI's defaults: WNUT-16 Twitter NER.

Slow (a few minutes): run with `pytest -m slow`. The guard for issue 28's
defect: before heads started from the training tags' shares (0.10), a
Houlsby tagger here answered `O` for every word (entity F1 0.000; full
fine-tuning 0.365 on this split, BENCHMARKS.md "Tagging words").
"""

import json
import os
import sys

import pytest

from keras_adapters import cli

pytestmark = pytest.mark.slow
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "examples"))

#: This test's run scored 0.464 (2026-12-04; 0.10: 0.000). Full fine-tuning: 0.483 ± 0.019 in 5
#: epochs, 3 seeds (BENCHMARKS.md). The margin is about two seeds' standard deviations.
THRESHOLD = 0.42


def test_a_houlsby_tagger_at_the_defaults_finds_entities(tmp_path, capsys):
    from wnut16_data import wnut16_split

    files = wnut16_split()
    run = tmp_path / "run"
    assert cli.main(["train", files["train"], "-o", str(run), "--method", "houlsby", "--sequence-length", "64",
                     "--quiet"]) == 0
    capsys.readouterr()
    assert cli.main(["evaluate", str(run), files["test"], "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["num_examples"] == 479
    assert result["f1"] >= THRESHOLD, result
    found = [kind for kind, scores in result["per_type"].items() if scores["f1"] > 0]
    assert len(found) >= 3, result["per_type"]
