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
