"""AdapterTextClassifier: the model whose first adapter classifies texts."""

import keras

from keras_adapters.models.adapter_model import DEFAULT_NAME  # noqa: F401  (its 0.8 home)
from keras_adapters.models.adapter_model import TOKEN_INPUTS  # noqa: F401
from keras_adapters.models.adapter_model import AdapterModel
from keras_adapters.models.adapter_model import checked_ids  # noqa: F401
from keras_adapters.models.adapter_model import complete_token_inputs  # noqa: F401
from keras_adapters.tasks.classification import check_labels  # noqa: F401


@keras.saving.register_keras_serializable(package="keras_adapters")
class AdapterTextClassifier(AdapterModel):
    """An `AdapterModel` whose first adapter classifies texts (or, with
    `task=`, does any other task): the name of 0.1 to 0.8, kept.

    Example:
    ```python
    model = AdapterTextClassifier.from_preset(
        default_preset(), num_classes=2, method="lora", sequence_length=64)
    model.fit(["good", "bad"], [1, 0], epochs=1)
    model.add_adapter("spam", "houlsby", num_classes=2)
    model.train_adapter("spam"); model.compile()
    ```
    """


__all__ = ["AdapterTextClassifier"]
