"""Training and evaluation steps traced once, not twice.

Keras on TensorFlow builds a model's optimizer and metrics up front only
under a distribution strategy; without one it leaves them to the first trace
of the step, and because that trace creates variables (the optimizer's
slots, the metrics' counts), `tf.function` traces the step a second time.
On MiniLM + LoRA under DP-SGD the first step took 32 s of wall time, 11 s
of it the second trace (BENCHMARKS.md, "Private training"). Here they are
built before the first trace, as Keras does under a strategy, from the
structure of the data.
"""

import tensorflow as tf


class BuildFirstMixin:
    """Builds the optimizer and compiled metrics before Keras traces a step
    (Keras' own `_symbolic_build`, from the data's structure)."""

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        if self._distribute_strategy is not None:
            return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)
        if iterator is not None:
            # The dataset's element spec, not a batch drawn from it: drawing
            # one would move a reshuffled dataset and the Poisson draws on.
            data_batch = getattr(getattr(iterator, "_distributed_dataset", None), "element_spec", None)
        if _shaped(data_batch):
            self._symbolic_build(data_batch=data_batch)
        # Otherwise (a spec of unknown rank, Python lists) Keras builds in the first trace.


def _shaped(structure):
    """Whether every part of `structure` has a dtype and a shape of known
    rank (what `_symbolic_build` makes its symbolic inputs from)."""
    parts = [] if structure is None else tf.nest.flatten(structure)
    return bool(parts) and all(part is None or (_rank(part) is not None and hasattr(part, "dtype")) for part in parts)


def _rank(part):
    try:
        return tf.TensorShape(getattr(part, "shape", None)).rank
    except (TypeError, ValueError):
        return None
