"""Maps method names to their config classes."""

import dataclasses

from keras_adapters.methods.base import AdapterConfig
from keras_adapters.methods.baselines import FullFineTuningConfig
from keras_adapters.methods.baselines import HeadOnlyConfig
from keras_adapters.methods.bottleneck import HoulsbyConfig
from keras_adapters.methods.bottleneck import PfeifferConfig
from keras_adapters.methods.ia3 import IA3Config
from keras_adapters.methods.lora import LoRAConfig

METHODS = {
    cls.method: cls
    for cls in (
        HoulsbyConfig,
        PfeifferConfig,
        LoRAConfig,
        IA3Config,
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
