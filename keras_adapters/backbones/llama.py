"""Llama-family decoders (Llama 2/3, SmolLM2, ...) from Hugging Face folders.

keras-hub's `Llama3Backbone` computes these models; its Hugging Face loader
leaves the RMS-norm epsilon at its default (1e-6), so the checkpoint's own
`rms_norm_eps` is passed here (SmolLM2's is 1e-5). A `.gguf` file becomes
such a folder first (`keras_adapters.io.gguf_checkpoint`).
"""

import json
import os

from keras_adapters.backbones.huggingface import model_type


def is_huggingface_llama(folder):
    """Whether `folder` holds a Hugging Face Llama checkpoint (`model_type: llama`)."""
    return model_type(folder) == "llama"


def from_huggingface(folder, load_weights=True, **kwargs):
    """keras-hub's `Llama3Backbone` with the checkpoint in `folder` and its
    `rms_norm_eps`.

    Example:
    ```python
    backbone = from_huggingface("smollm2_folder")
    hidden = backbone({"token_ids": ids, "padding_mask": mask})
    logits = backbone.token_embedding(hidden, reverse=True)
    ```
    """
    from keras_hub.src.models.llama3.llama3_backbone import Llama3Backbone
    from keras_hub.src.utils.preset_utils import get_preset_loader

    with open(os.path.join(folder, "config.json")) as f:
        epsilon = json.load(f).get("rms_norm_eps", 1e-6)
    return get_preset_loader(folder).load_backbone(Llama3Backbone, load_weights, layer_norm_epsilon=epsilon, **kwargs)


def tokenizer(folder):
    """keras-hub's `Llama3Tokenizer` (byte-level BPE) for the checkpoint in `folder`."""
    from keras_hub.src.models.llama3.llama3_tokenizer import Llama3Tokenizer
    from keras_hub.src.utils.preset_utils import get_preset_loader

    return get_preset_loader(folder).load_tokenizer(Llama3Tokenizer)
