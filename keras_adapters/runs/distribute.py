"""`tf.distribute` strategies for training: one device, mirrored, multi-worker.

`"multi-worker"` is `tf.distribute.MultiWorkerMirroredStrategy` configured
from the `TF_CONFIG` environment variable, the standard convention: every
process gets the same `cluster` and its own `task`, e.g.

    TF_CONFIG='{"cluster": {"worker": ["host1:2222", "host2:2222"]},
                "task": {"type": "worker", "index": 0}}'

The chief (task type `chief`, or worker 0 when the cluster has no chief)
writes the run folder; the other workers write their copies (which they need
to resume) to `OUTPUT/.worker-<index>/`, removed when training completes.

Keras 3.15's `fit` cannot run on several replicas as shipped: to build the
model it averages the first distributed batch over the replicas, which fails
on boolean inputs such as `padding_mask` (no `AddN` for bool) and under
collective all-reduce; and under multi-worker it reduces the scalar step
logs with `axis=0`, which collective all-reduce refuses
(keras-team/keras#20585). `get_strategy` installs two narrow fixes, taken
only with several replicas (one replica takes Keras' own path): the model is
built from one replica's batch, and multi-worker logs are averaged as
scalars.
"""

import json
import os

import numpy as np
import tensorflow as tf

STRATEGIES = ("default", "mirrored", "multi-worker")


def get_strategy(name=None):
    """`None`/`"default"`: one device; `"mirrored"`: all local GPUs, or every
    logical CPU device when there is no GPU; `"multi-worker"`: see the module."""
    if name in (None, "default"):
        return tf.distribute.get_strategy()
    if name == "mirrored":
        _fix_keras_for_replicas()
        gpus = tf.config.list_logical_devices("GPU")
        return tf.distribute.MirroredStrategy(None if gpus else [d.name for d in tf.config.list_logical_devices("CPU")])
    if name == "multi-worker":
        return multi_worker_strategy()
    raise ValueError(f"strategy must be one of {STRATEGIES}, got {name!r}.")


def cluster_config(environ=None):
    """`TF_CONFIG` parsed and checked; a clear error naming what is wrong."""
    raw = (os.environ if environ is None else environ).get("TF_CONFIG")
    example = (
        'e.g. TF_CONFIG=\'{"cluster": {"worker": ["host1:2222", "host2:2222"]}, '
        '"task": {"type": "worker", "index": 0}}\' (same cluster on every machine, its own task index)'
    )
    if not raw:
        raise ValueError(f"--strategy multi-worker reads the cluster from the TF_CONFIG environment variable, "
                         f"which is not set; {example}.")
    try:
        config = json.loads(raw)
        task = config["task"]
        addresses = config["cluster"][task["type"]]
        if not 0 <= int(task["index"]) < len(addresses):
            raise IndexError(task["index"])
    except (ValueError, KeyError, TypeError, IndexError) as e:
        raise ValueError(f"TF_CONFIG is not a valid cluster description ({type(e).__name__}: {e}); {example}.")
    return config


def multi_worker_strategy():
    """`MultiWorkerMirroredStrategy` from `TF_CONFIG` (checked first, for a clear error)."""
    cluster_config()
    _fix_keras_for_replicas()
    return tf.distribute.MultiWorkerMirroredStrategy()


def is_multi_worker(strategy):
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def worker_role(strategy):
    """(is_chief, index) of this process; (True, 0) outside multi-worker runs."""
    if not is_multi_worker(strategy):
        return True, 0
    resolver = strategy.cluster_resolver
    task_type, index = resolver.task_type, int(resolver.task_id or 0)
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return task_type == "chief" or (task_type == "worker" and index == 0 and not has_chief), index


def global_batch(batch_size, strategy):
    """`batch_size` as the global batch, the way `model.fit` reads it: each
    of the N replicas takes `batch_size / N` examples a step, so the same
    command takes the same optimizer steps on one worker or on N (a batch
    per replica would multiply the global batch by N and divide the steps by
    N: on BBC News, 2 workers then reached 0.70 test accuracy where one
    reached 0.86).

    Raises:
        ValueError: `batch_size` does not split evenly over the replicas.
    """
    replicas = strategy.num_replicas_in_sync
    if batch_size % replicas:
        nearest = max(replicas, round(batch_size / replicas) * replicas)
        raise ValueError(
            f"--batch-size {batch_size} is the global batch, split evenly over the {replicas} replicas of this "
            f"run; use a multiple of {replicas} (e.g. {nearest})."
        )
    return batch_size


def smallest_on_workers(strategy, value, limit):
    """The smallest of the integers `value` in `[0, limit]` that the workers pass."""
    if not is_multi_worker(strategy):
        return value
    counts = _sum_over_replicas(strategy, tf.one_hot(value, limit + 1))
    return int(np.flatnonzero(counts)[0])


def all_workers(strategy, flag):
    """True when `flag` is true on every worker (all of them learn the answer)."""
    if not is_multi_worker(strategy):
        return bool(flag)
    return int(_sum_over_replicas(strategy, tf.constant([float(bool(flag))]))[0]) == strategy.num_replicas_in_sync


def _sum_over_replicas(strategy, tensor):
    @tf.function
    def total():
        return strategy.reduce("SUM", strategy.run(lambda: tf.identity(tensor)), axis=None)

    return total().numpy()


def _fix_keras_for_replicas():
    from keras.src.backend.tensorflow import trainer

    if getattr(trainer, "_keras_adapters_multi_worker", False):
        return
    build, reduce = trainer.TensorFlowTrainer._maybe_symbolic_build, trainer.reduce_per_replica

    def maybe_symbolic_build(self, iterator=None, data_batch=None):
        strategy = self._distribute_strategy
        if strategy is None or strategy.num_replicas_in_sync == 1 or iterator is None:
            return build(self, iterator=iterator, data_batch=data_batch)
        # Building needs one batch's structure, not the mean over replicas that Keras takes.
        for _, _, it in iterator:
            data_batch = tf.nest.map_structure(lambda v: _local(strategy, v), next(it))
            break
        with strategy.scope():
            self._symbolic_build(data_batch=data_batch)

    def reduce_per_replica(values, strategy, reduction):
        if not is_multi_worker(strategy) or reduction not in ("auto", "mean"):
            return reduce(values, strategy, reduction)

        def mean(v):
            if not isinstance(v, tf.distribute.DistributedValues) and not tf.is_tensor(v):
                return v
            return strategy.reduce("MEAN", v, axis=0 if v.shape.rank else None)

        return tf.nest.map_structure(mean, values)

    trainer.TensorFlowTrainer._maybe_symbolic_build = maybe_symbolic_build
    trainer.reduce_per_replica = reduce_per_replica
    trainer._keras_adapters_multi_worker = True


def _local(strategy, value):
    if isinstance(value, tf.distribute.DistributedValues):
        return strategy.experimental_local_results(value)[0]
    return value
