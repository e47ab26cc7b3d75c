"""Composition blocks: how several named adapters act together, as plain data.

A model's active adapters are a *spec*: an adapter name, or one of the
blocks below (as in AdapterHub's `composition.py`). Blocks hold names and
other blocks only; the model and the injected sites interpret them.

- `Stack(a, b)`: `a` then `b` at every site (bottleneck outputs feed the
  next adapter; LoRA updates add; (IA)^3 scalings multiply). The output is
  the last one's head.
- `Parallel(a, b)`: every branch sees its own copy of the batch, in one
  forward pass; the output is a dict of each branch's head output.
- `Average(a, b, weights=...)`: at every site, the weighted mean of what each
  branch computes; the output is the weighted mean of the branches' heads
  (same number of classes). Weights are normalised to sum to 1.
- `Fuse(a, b, ...)`: AdapterFusion (Pfeiffer et al. 2021): a trainable
  attention over the bottleneck adapters' outputs in each layer, with its own
  head (`model.add_adapter_fusion`).
- `Route(a, b, ...)`: each row of the batch runs the one adapter its
  `adapter_id` input names (an index into the children), in one forward pass:
  the adapters' weights are gathered per row (mixed-task serving). The output
  has as many columns as the largest head; a row's columns past its own
  head's classes are 0.

What nests (anything else is refused with the reason):
`Stack` of names and `Fuse`; `Parallel` and `Average` of names and `Stack`s;
`Fuse` and `Route` of names (`Fuse`: of bottleneck adapters). `Parallel`
and `Route` only at the top.

Example:
```python
model.set_active_adapters(ka.Stack("language", "task"))
model.set_active_adapters(ka.Parallel("topic", "spam"))  # predict -> dict
```
"""

import numpy as np

#: Block name -> class, for `get_config`/`from_config`.
BLOCKS = {}


class CompositionBlock:
    """Base class: an ordered tuple of children (names or blocks)."""

    #: Which child kinds this block takes (names always).
    allowed_children = ()
    #: The fewest children that make sense.
    min_children = 2

    def __init__(self, *children):
        if len(children) == 1 and isinstance(children[0], (list, tuple)):
            children = tuple(children[0])
        if len(children) < self.min_children:
            wanted = "one adapter" if self.min_children == 1 else "two adapters"
            raise ValueError(f"{type(self).__name__} needs at least {wanted}, got {list(children)}.")
        self.children = tuple(parse(c) for c in children)
        for child in self.children:
            if isinstance(child, CompositionBlock) and not isinstance(child, self.allowed_children):
                allowed = ["adapter names"] + [c.__name__ for c in self.allowed_children]
                raise ValueError(
                    f"{type(self).__name__} cannot contain {type(child).__name__}: it takes "
                    f"{', '.join(allowed)}. {NESTING}"
                )
        names = [n for c in self.children for n in adapter_names(c)]
        if len(set(names)) != len(names) and not isinstance(self, Average):
            raise ValueError(f"{type(self).__name__} names an adapter twice: {names}.")

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        BLOCKS[cls.__name__] = cls

    def __iter__(self):
        return iter(self.children)

    def __len__(self):
        return len(self.children)

    def __eq__(self, other):
        return type(self) is type(other) and self.get_config() == other.get_config()

    def __hash__(self):
        return hash(repr(self))

    def __repr__(self):
        return f"{type(self).__name__}({', '.join(repr(c) for c in self.children)})"

    def get_config(self):
        return {"block": type(self).__name__, "children": [to_config(c) for c in self.children]}

    @classmethod
    def from_config(cls, config):
        return from_config(config)


NESTING = (
    "Stack takes names and Fuse; Parallel and Average take names and Stacks; "
    "Fuse and Route take names; Parallel and Route go at the top only."
)


class Fuse(CompositionBlock):
    """AdapterFusion over bottleneck adapters; `name` defaults to "a_b_c_fusion"."""

    def __init__(self, *children, name=None):
        super().__init__(*children)
        for child in self.children:
            if not isinstance(child, str):
                raise ValueError(f"Fuse takes adapter names only, got {child!r}. {NESTING}")
        self.name = name or "_".join(self.children) + "_fusion"

    def get_config(self):
        return {**super().get_config(), "name": self.name}

    def __repr__(self):
        return f"Fuse({', '.join(map(repr, self.children))}, name={self.name!r})"


class Stack(CompositionBlock):
    allowed_children = (Fuse,)
    min_children = 1


class Average(CompositionBlock):
    allowed_children = (Stack,)

    def __init__(self, *children, weights=None):
        super().__init__(*children)
        if weights is None:
            weights = [1.0] * len(self.children)
        weights = [float(w) for w in weights]
        if len(weights) != len(self.children) or any(w < 0 for w in weights) or sum(weights) <= 0:
            raise ValueError(
                f"Average weights must be {len(self.children)} non-negative numbers with a "
                f"positive sum, got {weights}."
            )
        total = sum(weights)
        self.weights = tuple(w / total for w in weights)

    def get_config(self):
        return {**super().get_config(), "weights": list(self.weights)}

    def __repr__(self):
        return f"Average({', '.join(map(repr, self.children))}, weights={list(self.weights)})"


class Parallel(CompositionBlock):
    allowed_children = (Stack,)


class Route(CompositionBlock):
    """Per-row routing: row `i` runs adapter `children[adapter_id[i]]`.

    The children are adapters of one task; the output is each row's own
    head's, its class axis as wide as the widest head (a row's columns past
    its own are 0).

    Example:
    ```python
    route = ka.Route("topic", "spam")
    model.set_active_adapters(route)
    model.predict({**tokens, "adapter_id": route.ids(["spam", "topic"])})
    ```
    """

    min_children = 1

    def __init__(self, *children):
        super().__init__(*children)
        for child in self.children:
            if not isinstance(child, str):
                raise ValueError(f"Route takes adapter names only, got {child!r}. {NESTING}")

    def ids(self, names):
        """The `adapter_id` input (int32 array) for a list of adapter names."""
        unknown = sorted({n for n in names if n not in self.children})
        if unknown:
            raise ValueError(f"Unknown adapter name(s) {unknown}; this Route serves {list(self.children)}.")
        return np.asarray([self.children.index(n) for n in names], dtype=np.int32)


def parse(spec):
    """A name or block, checked; lists become a `Stack` (AdapterHub's shorthand)."""
    if isinstance(spec, CompositionBlock):
        return spec
    if isinstance(spec, str):
        if not spec:
            raise ValueError("An adapter name cannot be empty.")
        return spec
    if isinstance(spec, (list, tuple)):
        return Stack(*spec)
    if isinstance(spec, dict):
        return from_config(spec)
    raise TypeError(
        f"An adapter spec is a name or a composition block (Stack, Parallel, Average, Fuse); "
        f"got {type(spec).__name__}."
    )


def adapter_names(spec):
    """Every adapter name in `spec`, in order (a Fuse gives its members)."""
    if isinstance(spec, str):
        return [spec]
    return [n for child in spec.children for n in adapter_names(child)]


def fusions(spec):
    """Every `Fuse` block in `spec`."""
    if isinstance(spec, Fuse):
        return [spec]
    if isinstance(spec, str):
        return []
    return [f for child in spec.children for f in fusions(child)]


def head_names(spec):
    """The head(s) that produce the output: a name, or a list for blocks that
    combine several (Average, Parallel)."""
    if isinstance(spec, str):
        return spec
    if isinstance(spec, Fuse):
        return spec.name
    if isinstance(spec, Stack):
        return head_names(spec.children[-1])
    return [head_names(child) for child in spec.children]


def to_config(spec):
    return spec if isinstance(spec, str) else spec.get_config()


def from_config(config):
    if isinstance(config, str):
        return config
    config = dict(config)
    try:
        cls = BLOCKS[config.pop("block")]
    except KeyError as e:
        raise ValueError(f"Unknown composition block {e}; known: {sorted(BLOCKS)}.") from None
    children = [from_config(c) for c in config.pop("children")]
    return cls(*children, **config)
