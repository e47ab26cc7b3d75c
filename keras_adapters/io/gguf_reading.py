"""Reading a GGUF file's fields and tensors (the `gguf` package's reader),
shared by the architectures `keras_adapters.io.gguf_checkpoint` converts."""

import numpy as np


class GGUFError(ValueError):
    """A GGUF file this library cannot convert."""


def fields(reader, model="decoder"):
    """`value(name, default)` over `reader`'s fields; a field asked for
    without a default must be there (else `GGUFError`, naming `model`)."""
    missing = object()

    def value(name, default=missing):
        field = reader.fields.get(name)
        if field is not None:
            return field.contents()
        if default is missing:
            raise GGUFError(f"the GGUF file has no {name!r} field, which a {model} model needs.")
        return default

    return value


def dequantized(tensor):
    """A GGUF tensor as float32 in Hugging Face's layout (`[out, in]` for a
    projection), whatever its quantization."""
    from gguf import dequantize

    return np.asarray(dequantize(tensor.data, tensor.tensor_type), dtype=np.float32)


#: llama.cpp's names of the tensors outside the layers -> Hugging Face's (Llama's and Gemma's alike).
GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}


def hf_tensors(reader, layer_names, model, fix=None):
    """{Hugging Face name: float32 array} of every tensor of `reader`,
    dequantized; `layer_names` maps llama.cpp's module names in
    `blk.{i}.{name}.weight` to Hugging Face's, `fix(name, weights)` undoes
    what llama.cpp changed in a tensor.

    Raises:
        GGUFError: a tensor with no place in a `model` model (named).
    """
    out = {}
    for tensor in reader.tensors:
        name = _hf_name(tensor.name, layer_names, model)
        weights = dequantized(tensor)
        out[name] = np.ascontiguousarray(weights if fix is None else fix(name, weights))
    return out


def _hf_name(name, layer_names, model):
    if name in GLOBAL_NAMES:
        return GLOBAL_NAMES[name]
    parts = name.split(".")
    if len(parts) == 4 and parts[0] == "blk" and parts[2] in layer_names and parts[3] == "weight":
        return f"model.layers.{int(parts[1])}.{layer_names[parts[2]]}.weight"
    raise GGUFError(f"GGUF tensor {name!r} has no place in a {model} model; nothing was converted.")
