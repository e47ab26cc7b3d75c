"""A checkpoint's chat template: how its conversations are written as text.

Hugging Face folders keep the template (Jinja) in `tokenizer_config.json`
(`chat_template`) or in `chat_template.jinja`; a GGUF file keeps it as
`tokenizer.chat_template`, which the conversion carries over. It is rendered
as transformers renders it (a sandboxed Jinja environment with
`trim_blocks`/`lstrip_blocks` and `raise_exception`), without transformers.
"""

import json
import os

#: The special-token names a template may use.
SPECIAL_TOKENS = ("bos_token", "eos_token", "pad_token", "unk_token")


class ChatTemplateError(ValueError):
    pass


def read_settings(folder):
    """(chat template or None, {special-token name: text}) of a Hugging Face folder."""
    settings = {}
    path = os.path.join(folder, "tokenizer_config.json")
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            settings = json.load(f)
    template = settings.get("chat_template")
    jinja_file = os.path.join(folder, "chat_template.jinja")
    if template is None and os.path.exists(jinja_file):
        with open(jinja_file, encoding="utf-8") as f:
            template = f.read()
    if isinstance(template, list):  # several named templates: the default one
        template = next((t["template"] for t in template if t.get("name") == "default"), None)
    tokens = {k: _content(settings.get(k)) for k in SPECIAL_TOKENS if settings.get(k) is not None}
    return template, tokens


def _content(token):
    return token.get("content") if isinstance(token, dict) else token


def render(template, messages, add_generation_prompt=False, special_tokens=None):
    """The text of `messages` (a list of `{"role", "content"}`) under `template`.

    Raises:
        ChatTemplateError: a malformed message, or the template refused it.
    """
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str) or not isinstance(
            message.get("content"), str
        ):
            raise ChatTemplateError(
                f"Message {i} is {message!r}; a message is {{\"role\": \"user\" | \"assistant\" | \"system\", "
                "\"content\": \"text\"}."
            )

    def raise_exception(text):
        raise ChatTemplateError(f"The chat template refused the conversation: {text}")

    environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    environment.globals["raise_exception"] = raise_exception
    try:
        compiled = environment.from_string(template)
    except jinja2.TemplateError as e:
        raise ChatTemplateError(f"The checkpoint's chat template is not valid Jinja: {e}") from None
    return compiled.render(messages=messages, add_generation_prompt=add_generation_prompt, **(special_tokens or {}))
