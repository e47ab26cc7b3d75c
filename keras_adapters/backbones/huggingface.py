"""What a Hugging Face checkpoint folder says about itself."""

import json
import os


def model_type(folder):
    """The `model_type` of `folder`'s `config.json` (None if it has none or no readable config)."""
    try:
        with open(os.path.join(folder, "config.json")) as f:
            return json.load(f).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None


def tokenizer_json(folder):
    """The folder's `tokenizer.json` (`{}` when it has none)."""
    path = os.path.join(folder, "tokenizer.json")
    if not os.path.exists(path):
        return {}
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def start_token_id(folder, tokenizer):
    """The id the checkpoint's tokenizer puts before every text, or None:
    `add_bos_token` of `tokenizer_config.json`, else a special token first in
    `tokenizer.json`'s post-processor (Llama 3's); SmolLM2 and GPT-2 add none."""
    path = os.path.join(folder, "tokenizer_config.json")
    settings = {}
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            settings = json.load(f)
    if "add_bos_token" in settings:
        return tokenizer.start_token_id if settings["add_bos_token"] else None
    processor = tokenizer_json(folder).get("post_processor") or {}
    processors = processor.get("processors", [processor])
    for item in processors:
        single = item.get("single") if item.get("type") == "TemplateProcessing" else None
        if single and "SpecialToken" in single[0]:
            return tokenizer.token_to_id(single[0]["SpecialToken"]["id"])
    return None


def stop_token_ids(folder, tokenizer):
    """The ids that end a generation: the tokenizer's end token(s) and the
    `eos_token_id`s of `generation_config.json` (Llama 3 Instruct ends turns with another)."""
    ids = [tokenizer.end_token_id, getattr(tokenizer, "end_token2_id", None)]
    path = os.path.join(folder, "generation_config.json")
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            eos = json.load(f).get("eos_token_id")
        ids += eos if isinstance(eos, list) else [eos]
    return tuple(dict.fromkeys(int(i) for i in ids if i is not None))
