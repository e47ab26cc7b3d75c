"""Files in and out: presets (backbones, tokenizers), adapter folders, text data readers."""
