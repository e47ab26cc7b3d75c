"""Training defaults per (task, method): one table, each entry with the measurement behind it.

A method's own learning rate (its config's `default_learning_rate`, chosen
on BBC News) holds for every task the table does not name. An entry is
added only with a same-split comparison against that default.
"""

from keras_adapters.tasks.base import QUESTION_ANSWERING
from keras_adapters.tasks.base import TOKEN_CLASSIFICATION

#: {(task, method): peak learning rate}
LEARNING_RATES = {
    # SQuAD, 3,000 questions, 2 epochs: test F1 56.8 at 3e-3 against 30.9 at
    # the method's 1e-3 (BENCHMARKS.md, "Extractive QA").
    (QUESTION_ANSWERING, "houlsby"): 3e-3,
    # WNUT-16, 5 epochs, heads from the class prior, chosen on the validation
    # split (best-epoch tag F1; BENCHMARKS.md, "Tagging words"): full 0.563 at
    # 1e-4 against 0.346 at the method's 3e-5; Houlsby 0.582 at 3e-3 against
    # 0.509 at 1e-3; LoRA 0.582 at 3e-3 against 0.571 at 1e-3; Pfeiffer 0.559
    # at 3e-3 against 0.471 at 1e-3.
    (TOKEN_CLASSIFICATION, "full"): 1e-4,
    (TOKEN_CLASSIFICATION, "houlsby"): 3e-3,
    (TOKEN_CLASSIFICATION, "lora"): 3e-3,
    (TOKEN_CLASSIFICATION, "pfeiffer"): 3e-3,
}


#: {(task, method): how far the method falls short of full fine-tuning there,
#: measured}; `train` warns when one is chosen.
SHORTFALLS = {
    (TOKEN_CLASSIFICATION, "pfeiffer"): (
        "on WNUT-16 tagging Pfeiffer adapters score entity F1 0.462 ± 0.013 against full fine-tuning's "
        "0.483 ± 0.019, Houlsby's 0.491 and LoRA's 0.518 (3 seeds, BENCHMARKS.md 'Tagging words'): one "
        "adapter per layer, half Houlsby's weights. Use --method houlsby or lora to tag."
    ),
    (QUESTION_ANSWERING, "pfeiffer"): (
        "on SQuAD (3,000 questions, 2 epochs) a Pfeiffer adapter scored test F1 48.2 at 3e-3 against full "
        "fine-tuning's 54.6 and 58.2 and Houlsby's 53.1 and 58.2 (seeds 0 and 1; BENCHMARKS.md 'Extractive "
        "QA'): one adapter per layer, half Houlsby's weights. Use --method houlsby or lora for question answering."
    ),
    (TOKEN_CLASSIFICATION, "prefix"): (
        "on WNUT-16 tagging prefix tuning scores entity F1 0.390 against full fine-tuning's 0.483 ± 0.019 "
        "and LoRA's 0.518 (seed 0; BENCHMARKS.md 'Tagging words'), its validation F1 still rising slowly "
        "after the 5 epochs (0.42, 0.43). Use --method lora or houlsby to tag."
    ),
    (TOKEN_CLASSIFICATION, "prompt"): (
        "on WNUT-16 tagging prompt tuning scores entity F1 0.358 against full fine-tuning's 0.483 ± 0.019 "
        "and LoRA's 0.518 (seed 0; BENCHMARKS.md 'Tagging words'), its validation F1 level from the "
        "second epoch on (0.47, 0.44, 0.48, 0.46): 20 trained input vectors and the head, 15,765 weights. "
        "Use --method lora or houlsby to tag."
    ),
}


def shortfall(task, method):
    """What `train` warns about `method` on `task` (`None`: nothing measured against it)."""
    return SHORTFALLS.get((task, method))


def learning_rate(task, config):
    """The peak learning rate `train` uses for adapter `config` on `task`."""
    return LEARNING_RATES.get((task, config.method), config.default_learning_rate)
