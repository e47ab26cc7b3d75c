"""Maps method names to their config classes."""

import dataclasses
import json

from keras_adapters.methods.base import AdapterConfig
from keras_adapters.methods.baselines import FullFineTuningConfig
from keras_adapters.methods.baselines import HeadOnlyConfig
from keras_adapters.methods.bitfit import BitFitConfig
from keras_adapters.methods.bottleneck import HoulsbyConfig
from keras_adapters.methods.compacter import CompacterConfig
from keras_adapters.methods.compacter import CompacterPlusPlusConfig
from keras_adapters.methods.bottleneck import PfeifferConfig
from keras_adapters.methods.ia3 import IA3Config
from keras_adapters.methods.lora import LoRAConfig
from keras_adapters.methods.mam import MAMConfig
from keras_adapters.methods.parallel import ParallelAdapterConfig
from keras_adapters.methods.prefix import PrefixConfig
from keras_adapters.methods.prompt import PromptConfig

METHODS = {
    cls.method: cls
    for cls in (
        HoulsbyConfig,
        PfeifferConfig,
        ParallelAdapterConfig,
        CompacterConfig,
        CompacterPlusPlusConfig,
        LoRAConfig,
        IA3Config,
        BitFitConfig,
        PromptConfig,
        PrefixConfig,
        MAMConfig,
        FullFineTuningConfig,
        HeadOnlyConfig,
    )
}


def available_methods():
    """The method names `get_adapter_config` accepts."""
    return sorted(METHODS)


def get_adapter_config(adapter):
    """Turn a method name, a config dict or a config into a config.

    Args:
        adapter: `"houlsby"` (that method's defaults), a dict as written by
            `AdapterConfig.get_config()` (with a `"method"` key), or an
            `AdapterConfig` instance (returned as is).
    """
    if isinstance(adapter, AdapterConfig):
        return adapter
    if isinstance(adapter, str):
        return _config_class(adapter)()
    if isinstance(adapter, dict):
        if "method" not in adapter:
            raise ValueError(
                "An adapter config dict needs a 'method' key, one of "
                f"{available_methods()}; got keys {sorted(adapter)}."
            )
        return _config_class(adapter["method"]).from_config(adapter)
    raise TypeError(
        "adapter must be a method name, a config dict or an AdapterConfig; "
        f"got {type(adapter).__name__}."
    )


def config_from_options(method, options):
    """A config of `method` from `KEY=VALUE` strings (the CLI's `--method-option`).

    Values are read by the field's type: `true`/`false` for flags, numbers,
    comma-separated names for lists (`target_modules=query,value`), JSON
    objects for patterns (`rank_pattern={"query": 16}`), `none` for optional
    fields.

    Example:
    ```python
    config_from_options("lora", ["rank=16", "use_dora=true"])
    ```
    """
    cls = _config_class(method)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values = {}
    for option in options:
        key, sep, text = option.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in fields:
            raise ValueError(
                f"--method-option {option!r}: expected KEY=VALUE with KEY one of {sorted(fields)} "
                f"(the fields of {cls.__name__})."
            )
        values[key] = _parse_value(fields[key], text.strip(), option)
    return cls(**values)


def _parse_value(field, text, option):
    kind = field.type
    if text.lower() == "none" and field.default is None:
        return None
    try:
        if kind is bool:
            if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return text.lower() in ("true", "1", "yes")
        if kind is tuple:
            return tuple(t.strip() for t in text.split(",") if t.strip())
        if kind == (dict | None):
            value = json.loads(text)
            if not isinstance(value, dict):
                raise ValueError
            return value
        for number in (int, float):
            if kind is number or kind == (number | None):
                return number(text)
    except ValueError:
        wanted = {bool: "true or false", int: "an integer", float: "a number", dict: 'a JSON object ({"query": 16})'}
        kind_name = next((v for k, v in wanted.items() if kind is k or kind == (k | None)), kind)
        raise ValueError(f"--method-option {option!r}: {field.name} takes {kind_name}.") from None
    return text


def known_fields(method):
    """The field names of `method`'s config."""
    return {f.name for f in dataclasses.fields(_config_class(method))}


def _config_class(method):
    try:
        return METHODS[method]
    except KeyError:
        raise ValueError(
            f"Unknown adapter method {method!r}. Available methods: "
            f"{available_methods()}."
        ) from None
