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


class BuildFirstMixin:
    """Builds the optimizer and compiled metrics before Keras traces a step
    (Keras' own `_symbolic_build`, from the data's structure)."""

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        if self._distribute_strategy is not None:
            return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)
        if iterator is not None:
            # The dataset's element spec, not a batch drawn from it: drawing
            # one would move the shuffling and the Poisson draws on.
            data_batch = getattr(getattr(iterator, "_distributed_dataset", None), "element_spec", None)
        if data_batch is not None:
            self._symbolic_build(data_batch=data_batch)
