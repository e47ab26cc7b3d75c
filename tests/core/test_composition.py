"""Composition blocks as plain data: round trips, nesting rules, heads."""

import pytest

import keras_adapters as ka
from keras_adapters.core import composition


@pytest.mark.parametrize(
    "block",
    [
        ka.Stack("a", "b"),
        ka.Stack("lang", ka.Fuse("x", "y", name="xy")),
        ka.Parallel("a", ka.Stack("b", "c")),
        ka.Average("a", "b", weights=[3, 1]),
        ka.Average(ka.Stack("a", "b"), "c"),
        ka.Fuse("a", "b", "c"),
        ka.Route("a", "b", "c"),
        ka.Route("a"),
    ],
)
def test_blocks_round_trip_through_config(block):
    config = block.get_config()
    again = composition.from_config(config)
    assert again == block and type(again) is type(block)
    assert again.get_config() == config


def test_lists_are_stacks_and_names_stay_names():
    assert composition.parse(["a", "b"]) == ka.Stack("a", "b")
    assert composition.parse("a") == "a"


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: ka.Stack("a", ka.Parallel("b", "c")), "Stack cannot contain Parallel"),
        (lambda: ka.Stack("a", ka.Average("b", "c")), "Stack cannot contain Average"),
        (lambda: ka.Parallel("a", ka.Parallel("b", "c")), "Parallel cannot contain Parallel"),
        (lambda: ka.Parallel("a", ka.Fuse("b", "c")), "Parallel cannot contain Fuse"),
        (lambda: ka.Fuse("a", ka.Stack("b", "c")), "Fuse cannot contain Stack"),
        (lambda: ka.Stack("a", "a"), "names an adapter twice"),
        (lambda: ka.Parallel("a", "a"), "names an adapter twice"),
        (lambda: ka.Parallel("a"), "at least two"),
        (lambda: ka.Route(), "at least one"),
        (lambda: ka.Route("a", ka.Stack("b", "c")), "Route cannot contain Stack"),
        (lambda: ka.Route("a", "a"), "names an adapter twice"),
        (lambda: ka.Parallel("a", ka.Route("b", "c")), "Parallel cannot contain Route"),
        (lambda: ka.Stack("a", ka.Route("b", "c")), "Stack cannot contain Route"),
        (lambda: ka.Average("a", "b", weights=[1]), "2 non-negative numbers"),
        (lambda: ka.Average("a", "b", weights=[0, 0]), "positive sum"),
        (lambda: composition.parse(3), "name or a composition block"),
    ],
)
def test_what_does_not_nest_is_refused(make, message):
    with pytest.raises((ValueError, TypeError), match=message):
        make()


def test_average_weights_are_normalised():
    assert ka.Average("a", "b", weights=[3, 1]).weights == (0.75, 0.25)


def test_head_names_and_adapter_names():
    assert composition.head_names(ka.Stack("a", "b")) == "b"
    assert composition.head_names(ka.Stack("a", ka.Fuse("b", "c"))) == "b_c_fusion"
    assert composition.head_names(ka.Parallel("a", ka.Stack("b", "c"))) == ["a", "c"]
    assert composition.adapter_names(ka.Stack("a", ka.Fuse("b", "c"))) == ["a", "b", "c"]


def test_route_ids_index_its_children():
    route = ka.Route("topic", "spam", "lang")
    assert route.ids(["spam", "spam", "lang", "topic"]).tolist() == [1, 1, 2, 0]
    assert route.ids([]).shape == (0,)
    with pytest.raises(ValueError, match=r"Unknown adapter name\(s\) \['weather'\]; this Route serves"):
        route.ids(["topic", "weather"])
