"""GGUF checkpoints (llama.cpp's format) as Hugging Face folders keras-hub loads.

A `.gguf` file holds a model's config and tokenizer as metadata and its
weights, often quantized. `convert_gguf` reads it with the `gguf` package,
dequantizes every tensor to float32 (so Q4_1 weights become a float32 model
that computes what the quantized one does, not the original float model),
undoes what llama.cpp changed in the tensors, and writes `config.json`,
`model.safetensors` and the tokenizer files under Hugging Face's names.
`cached_folder` does that once per file, keyed and checked by the file's
SHA-256.

Each architecture is one module (`ARCHITECTURES`): `llama`
(`keras_adapters.io.gguf_llama`: SmolLM2 and other byte-level BPE Llamas)
and `gemma3` (`keras_adapters.io.gguf_gemma3`: Gemma 3 270M and 1B). Other
architectures, and what those modules do not convert, are refused by name.
"""

import json
from pathlib import Path

from keras_adapters.io import gguf_gemma3
from keras_adapters.io import gguf_llama
from keras_adapters.io.adapter_folder import file_sha256 as sha256
from keras_adapters.io.adapter_folder import replace_folder
from keras_adapters.io.gguf_reading import GGUFError
from keras_adapters.io.gguf_reading import fields

#: llama.cpp's `general.architecture` -> the module that reads such files
#: (`read_config`, `read_tensors`, `read_tokenizer`).
ARCHITECTURES = {"llama": gguf_llama, "gemma3": gguf_gemma3}
#: The Llama modules' names (tests write GGUF files with them).
LAYER_NAMES = gguf_llama.LAYER_NAMES
SOURCE_FILE = "gguf_source.json"

__all__ = ["ARCHITECTURES", "GGUFError", "cached_folder", "convert_gguf", "is_gguf_file", "sha256"]


def is_gguf_file(path):
    """Whether `path` names a GGUF checkpoint file."""
    return str(path).endswith(".gguf") and Path(path).is_file()


def architecture(reader):
    """The module converting `reader`'s architecture (see `ARCHITECTURES`)."""
    arch = fields(reader)("general.architecture", None)
    if arch not in ARCHITECTURES:
        raise GGUFError(
            f"GGUF architecture {arch!r}: only Llama-family ('llama') and Gemma 3 ('gemma3') files convert here."
        )
    return ARCHITECTURES[arch]


def convert_gguf(path, output, digest=None):
    """Write the GGUF file `path` as a Hugging Face folder `output` (replaced
    whole, or left as it was on failure); `digest`: the file's SHA-256 when
    the caller has it. Returns `output`.

    Raises:
        GGUFError: the file is not a GGUF this library converts (the reason named).
    """
    from gguf import GGUFReader
    from safetensors.numpy import save_file

    try:
        reader = GGUFReader(str(path))
    except (ValueError, OSError, KeyError) as e:
        raise GGUFError(f"{path} is not a readable GGUF file: {e}") from None
    module = architecture(reader)
    config = module.read_config(reader)
    files = module.read_tokenizer(reader)
    tensors = module.read_tensors(reader, config)
    files["config.json"] = config
    files[SOURCE_FILE] = {"gguf": Path(path).name, "sha256": digest or sha256(path),
                          "note": "dequantized to float32: a quantized model's weights, not the original float ones"}

    def fill(folder):
        folder = Path(folder)
        save_file(tensors, str(folder / "model.safetensors"))  # straight to disk: no second copy in memory
        for name, data in files.items():
            if isinstance(data, bytes):
                (folder / name).write_bytes(data)
            else:
                (folder / name).write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")

    return replace_folder(output, fill)


def cached_folder(path, cache_dir):
    """The converted folder of GGUF file `path` under `cache_dir`, converting
    it the first time; a folder whose recorded SHA-256 is not the file's is
    converted again."""
    digest = sha256(path)
    folder = Path(cache_dir) / f"{Path(path).stem}-{digest[:16]}"
    try:
        recorded = json.loads((folder / SOURCE_FILE).read_text(encoding="utf-8"))["sha256"]
    except (OSError, ValueError, KeyError):
        recorded = None
    if recorded != digest:
        convert_gguf(path, folder, digest)
    return folder
