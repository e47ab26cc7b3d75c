"""Text generation for `AdapterCausalLM`: prompts (plain or under the chat
template) -> token ids -> the compiled, KV-cached decoding loop of
`keras_adapters.models.decoding` -> text."""

import numpy as np
import tensorflow as tf

from keras_adapters.core import injection
from keras_adapters.io import chat_template
from keras_adapters.models.decoding import generate as decode_tokens

#: Generation pads the prompts of a batch to a multiple of this many tokens.
PROMPT_STEP = 16


class GenerationMixin:
    """`generate` and `prompt_texts` for `AdapterCausalLM`, which provides
    `tokenizer`, `language_model`, `backbone`, `template`, `special_tokens`,
    `chat`, `stop_token_ids`, `start_token_id`, `_family`, `_sampler` /
    `_decode` (the traced decoding loop and its sampler) and
    `_check_positions`."""

    def prompt_texts(self, prompts, chat=None):
        """Each prompt as the text the model continues: a string as it is (a
        user message under the chat template with `chat=True`), a list of
        messages under the template, ready for the assistant's answer."""
        texts = []
        for prompt in prompts:
            if isinstance(prompt, str) and not (self.chat if chat is None else chat):
                texts.append(prompt)
                continue
            messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
            if self.template is None:
                raise ValueError("This checkpoint has no chat template; pass prompts as plain strings without chat.")
            texts.append(chat_template.render(self.template, messages, True, self.special_tokens))
        return texts

    def generate(self, prompts, max_new_tokens=64, sampler="greedy", chat=None, batch_size=8, stop_token_ids="auto"):
        """The text each prompt continues with (prompt not included).

        Args:
            prompts: a string, a list of strings, or a list of conversations
                (lists of `{"role", "content"}` messages).
            max_new_tokens: the most tokens generated per prompt.
            sampler: `"greedy"`, `"top_k"`, `"top_p"`, `"random"`, or a
                `keras_hub.samplers.Sampler` (e.g. `TopPSampler(p=0.9,
                temperature=0.7, seed=1)`).
            chat: write plain-string prompts as user messages under the chat
                template (`None`: as the model's `chat` says).
            batch_size: prompts decoded together.
            stop_token_ids: ids that end a generation (`"auto"`: the
                checkpoint's, `model.stop_token_ids`); `None` to always
                generate `max_new_tokens`.
        """
        import keras_hub

        single = isinstance(prompts, str)
        texts = self.prompt_texts([prompts] if single else list(prompts), chat)
        if stop_token_ids == "auto":
            stop_token_ids = self.stop_token_ids
        _check_generation(max_new_tokens, batch_size, sampler)
        sampler = keras_hub.samplers.get(sampler) if isinstance(sampler, str) else sampler
        if _sampler_key(sampler) != _sampler_key(self._sampler):
            # The decoding loop is traced (and compiled) with its sampler: a new one needs a new trace.
            self._sampler, self._decode = sampler, None
        answers = []
        for start in range(0, len(texts), batch_size):
            answers += self._generate_batch(texts[start:start + batch_size], max_new_tokens, stop_token_ids)
        return answers[0] if single else answers

    def _generate_batch(self, texts, max_new_tokens, stop_token_ids):
        return [
            str(self.tokenizer.detokenize(np.array(ids, np.int32))) if ids else ""
            for ids in self._generated_ids(texts, max_new_tokens, stop_token_ids)
        ]

    def _generated_ids(self, texts, max_new_tokens, stop_token_ids):
        """Each text's generated token ids, up to (without) the first stop token."""
        rows = [self._prompt_ids(t) for t in texts]
        # The last new token is never fed back: it takes no position.
        longest = max(map(len, rows))
        self._check_positions(longest + int(max_new_tokens) - 1, "The prompt and max_new_tokens",
                              lambda room: f"ask for max_new_tokens={room - longest + 1} or fewer")
        # Prompts padded to a multiple of PROMPT_STEP tokens: few shapes to trace and compile.
        ids = np.zeros((len(rows), -(-max(map(len, rows)) // PROMPT_STEP) * PROMPT_STEP), np.int32)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = row
        lengths = np.array([len(r) for r in rows], np.int32)
        stop_token_ids = tuple(int(t) for t in stop_token_ids or ()) or None  # keras-hub's "never stop" is None
        new = np.asarray(self._decode_function()(ids, lengths, int(max_new_tokens), stop_token_ids))
        generated = []
        for row in new.tolist():
            ends = [j for j, token in enumerate(row) if stop_token_ids and token in stop_token_ids]
            generated.append(row[: ends[0]] if ends else row)
        return generated

    def _decode_function(self):
        """The compiled decoding loop (`keras_adapters.models.decoding`), traced
        per prompt width, `max_new_tokens` and stop tokens."""
        if self._decode is None:
            import keras_hub

            self._sampler = self._sampler or keras_hub.samplers.get("greedy")

            def decode(token_ids, lengths, max_new_tokens, stop_token_ids):
                return decode_tokens(self.language_model, self._family, token_ids, lengths, max_new_tokens,
                                         self._sampler, stop_token_ids, injection.input_units(self.backbone))

            self._decode = tf.function(decode, jit_compile=True)
        return self._decode

    def _prompt_ids(self, text):
        ids = [int(t) for t in np.asarray(self.tokenizer(text))]
        if self.start_token_id is not None and (not ids or ids[0] != self.start_token_id):
            ids = [int(self.start_token_id), *ids]
        if not ids:
            raise ValueError("An empty prompt gives the model nothing to continue; pass some text.")
        return ids


def _sampler_key(sampler):
    return None if sampler is None else (type(sampler).__name__, id(sampler) if _seeded(sampler) else
                                         str(sorted(sampler.get_config().items())))


def _seeded(sampler):
    return getattr(sampler, "seed", None) is not None


def _check_generation(max_new_tokens, batch_size, sampler):
    for name, value in (("max_new_tokens", max_new_tokens), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"generate: {name} must be a whole number of at least 1, got {value!r}.")
    if sampler is None:
        raise ValueError("generate: pass a sampler: 'greedy', 'top_k', 'top_p', 'random' or a keras_hub Sampler.")
