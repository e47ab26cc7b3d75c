"""Routed serving: one signature of a task serves all of that task's adapters,
each row naming its own (`adapter`, a string per row).

The backbone runs once for the whole batch with each row's adapter weights
gathered (`ka.Route`, `injection.routing`); each task's serving functions
(`TaskServing` with a `Router`) give each row exactly what its adapter alone
would: its own sequence length (and QA window settings), its own labels,
thresholds or tags. The per-adapter constants are tables indexed by each
row's adapter id.
"""

import tensorflow as tf

#: The `adapter` input of every routed signature.
ADAPTER_SPEC = tf.TensorSpec([None], tf.string, name="adapter")


def adapter_length(model, name):
    """The sequence length adapter `name` was trained with."""
    return int(model.heads[name].sequence_length or model.sequence_length or 512)


class NameTable:
    """Each row's index into a list of adapter names (`adapter`, a string per row).

    Args:
        names: the served adapters, in order.
        aliases: other names rows may use -> adapter name (run folders' names).
        hint: said after the served names when a row names an unknown one.
    """

    def __init__(self, names, aliases=None, hint=""):
        self.names = list(names)
        self.hint = hint
        keys = {n: i for i, n in enumerate(self.names)}
        for alias, name in (aliases or {}).items():
            if name in keys:
                keys.setdefault(alias, keys[name])
        self.table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(tf.constant(list(keys)), tf.constant(list(keys.values()), tf.int32)),
            default_value=-1,
        )

    def ids(self, adapter, rows):
        """Each row's index into `names`; an error naming unknown names and
        the served ones, or a count that is not one name per row."""
        adapter = tf.reshape(adapter, [-1])
        ids = self.table.lookup(adapter)
        unknown = tf.strings.reduce_join(tf.boolean_mask(adapter, ids < 0), separator=", ")
        checks = [
            tf.debugging.assert_equal(
                tf.size(adapter), tf.cast(rows, tf.int32), message="'adapter' needs one adapter name per input row"
            ),
            tf.debugging.Assert(
                tf.reduce_all(ids >= 0),
                [tf.strings.join([
                    "Unknown adapter name(s): ", unknown, f". This signature serves: {', '.join(self.names)}.{self.hint}"
                ])],
            ),
        ]
        with tf.control_dependencies(checks):
            return tf.identity(ids)


class Router(NameTable):
    """The adapters one routed signature serves, and each row's index into them.

    Args:
        model: the model, with `Route(*names)` active when traced.
        names: the adapters, in the Route's order.
        aliases: other names rows may use -> adapter name (run folders' names).
        elsewhere: {adapter name: the signature serving it} for the same
            model's other routed signatures, named in the unknown-name error.

    Example:
    ```python
    router = Router(model, ["news", "spam"])
    ids = router.ids(tf.constant(["spam", "news"]), 2)  # [1, 0]
    ```
    """

    def __init__(self, model, names, aliases=None, elsewhere=None):
        by_signature = {}
        for name, signature in (elsewhere or {}).items():
            by_signature.setdefault(signature, []).append(name)
        hint = "; ".join(f"{s} serves {', '.join(n)}" for s, n in by_signature.items())
        super().__init__(names, aliases, f" ({hint}.)" if hint else "")
        self.heads = [model.heads[n] for n in self.names]
        self.lengths = [adapter_length(model, n) for n in self.names]


def padded_table(rows, fill, dtype=None, width=None):
    """A constant `[len(rows), width]` (default: the longest) from lists of different lengths."""
    width = width or max(len(r) for r in rows)
    return tf.constant([list(r) + [fill] * (width - len(r)) for r in rows], dtype=dtype)


def settings_index(values):
    """(the distinct values in first-seen order, each value's index among them)."""
    distinct = list(dict.fromkeys(values))
    return distinct, [distinct.index(v) for v in values]
