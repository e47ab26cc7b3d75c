"""Causal language modelling data: prompt/completion and chat JSONL files as
`tf.data` batches whose loss covers the completion tokens only.

`CausalLM` is the registered `Task`: what runs, the CLI and export ask of a
causal-LM adapter (detection, evaluation, predictions); its model is
`keras_adapters.AdapterCausalLM` and its head the decoder's own token output.

A record is one of:

- `{"prompt": "...", "completion": "..."}`: the two texts as they are (the
  completion followed by the end token), as TRL's SFT trainer reads
  "prompt-completion" data; with `chat=True` they become a user message and
  the assistant's answer under the checkpoint's chat template.
- `{"messages": [{"role": ..., "content": ...}, ...]}`: a conversation under
  the chat template; the last message (the assistant's) is the completion.

Texts become token ids in the graph (the checkpoint's keras-hub tokenizer
inside `Dataset.map`). Each example is `(inputs, next tokens, weights)`:
`inputs` the tokens but the last (`token_ids`, `padding_mask`), the labels
the tokens but the first, and the weight 1 where the label is a completion
token, so a `mean_with_sample_weight` loss is the mean negative
log-likelihood of the completions (as PyTorch's cross-entropy with the
prompt's labels set to -100). Batches take examples in the data's (shuffled)
order, as PyTorch loops and Hugging Face's Trainer do, padded to a multiple of
`BUCKET_STEP`; `bucket_by_sequence_length=True` groups examples of similar
length instead (less padding, but each batch is then one length: short and
long examples no longer train together).
"""

import json
from pathlib import Path

import numpy as np
import tensorflow as tf

from keras_adapters.io import chat_template
from keras_adapters.tasks.base import CAUSAL_LM
from keras_adapters.tasks.base import SAMPLE_SIZE
from keras_adapters.tasks.base import Task
from keras_adapters.tasks.base import first_record_fields
from keras_adapters.tasks.base import register_task

NAME = CAUSAL_LM
#: Tokens generated per prompt unless told (evaluation's BLEU/chrF, predictions).
MAX_NEW_TOKENS = 128
#: Bucket bounds are multiples of this many tokens (few distinct shapes to trace).
BUCKET_STEP = 32


class CausalLMDataError(ValueError):
    pass


def read_records(path):
    """The records of a JSONL file, each checked to be one of the two kinds.

    Raises:
        CausalLMDataError: names the file, line and what is wrong.
    """
    records = []
    with open(path, encoding="utf-8-sig") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise CausalLMDataError(f"{where}: not a JSON object ({e.msg}).") from None
            records.append(check_record(record, where))
    if not records:
        raise CausalLMDataError(f"{path} holds no records; each line is a JSON object (prompt/completion or messages).")
    return records


def check_record(record, where="record"):
    if isinstance(record, dict) and isinstance(record.get("messages"), list):
        messages = record["messages"]
        if not messages or not isinstance(messages[-1], dict) or messages[-1].get("role") != "assistant":
            raise CausalLMDataError(
                f"{where}: the last message of a conversation is the assistant's answer the model learns "
                "(role 'assistant')."
            )
        return record
    if isinstance(record, dict) and isinstance(record.get("prompt"), str) and isinstance(record.get("completion"), str):
        return record
    keys = sorted(record) if isinstance(record, dict) else type(record).__name__
    raise CausalLMDataError(
        f"{where}: a record is {{\"prompt\": text, \"completion\": text}} or {{\"messages\": [...]}}; got {keys}."
    )


def texts(record, template=None, special_tokens=None, chat=False):
    """(prompt text, completion text) of one record.

    Raises:
        CausalLMDataError: a conversation (or `chat=True`) without a chat
            template, or a template that does not write the prompt as the
            start of the whole conversation.
    """
    if "messages" not in record and not chat:
        return record["prompt"], record["completion"]
    messages = record.get("messages") or [
        {"role": "user", "content": record["prompt"]},
        {"role": "assistant", "content": record["completion"]},
    ]
    if template is None:
        raise CausalLMDataError(
            "Conversations are written with the checkpoint's chat template, and this checkpoint has none "
            "(tokenizer_config.json: chat_template): use prompt/completion records without chat."
        )
    prompt = chat_template.render(template, messages[:-1], add_generation_prompt=True, special_tokens=special_tokens)
    whole = chat_template.render(template, messages, special_tokens=special_tokens)
    if not whole.startswith(prompt):
        raise CausalLMDataError(
            "The chat template writes the conversation without its last answer differently from the start of "
            "the whole conversation, so the answer's tokens cannot be told apart."
        )
    return prompt, whole[len(prompt):]


def encode(tokenizer, prompt, completion, end_id, sequence_length, start_token_id=None):
    """`tf.data`-mappable: one prompt and completion -> (inputs, labels, weights).

    `end_id` (a scalar; -1 for none) follows the completion, `start_token_id`
    precedes the prompt (checkpoints that add one). At most
    `sequence_length` input tokens are kept (the end of a long completion is cut).
    """
    prompt_ids = tf.cast(tokenizer(prompt), tf.int32)
    completion_ids = tf.cast(tokenizer(completion), tf.int32)
    if start_token_id is not None:
        start = tf.constant([start_token_id], tf.int32)
        first = tf.concat([prompt_ids[:1], [-1]], 0)[:1]  # -1 for an empty prompt
        prompt_ids = tf.concat([tf.boolean_mask(start, tf.not_equal(first, start)), prompt_ids], 0)
    end_id = tf.cast(tf.reshape(end_id, [1]), tf.int32)
    completion_ids = tf.concat([completion_ids, tf.boolean_mask(end_id, end_id >= 0)], 0)
    ids = tf.concat([prompt_ids, completion_ids], 0)[: sequence_length + 1]
    in_completion = tf.range(tf.shape(ids)[0]) >= tf.shape(prompt_ids)[0]
    inputs = {"token_ids": ids[:-1], "padding_mask": tf.ones_like(ids[:-1], tf.bool)}
    return inputs, ids[1:], tf.cast(in_completion[1:], tf.float32)


def dataset(records, tokenizer, sequence_length, batch_size=8, template=None, special_tokens=None, chat=False,
            end_token_id=None, start_token_id=None, shuffle=False, seed=0, bucket_by_sequence_length=False):
    """A batched `tf.data.Dataset` of `(inputs, labels, weights)` from records.

    Plain prompt/completion records get `end_token_id` after the completion
    (the chat template writes a conversation's own end). Batches are padded
    to a multiple of `BUCKET_STEP`; with `bucket_by_sequence_length` they
    hold examples of similar length.
    """
    pairs = [texts(r, template, special_tokens, chat) for r in records]
    plain = ("messages" not in r and not chat for r in records)
    ends = [end_token_id if p and end_token_id is not None else -1 for p in plain]
    data = tf.data.Dataset.from_tensor_slices(([p for p, _ in pairs], [c for _, c in pairs], np.array(ends, np.int32)))
    data = data.map(
        lambda p, c, e: encode(tokenizer, p, c, e, sequence_length, start_token_id),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    # An example whose prompt fills the sequence has nothing to learn (or score): left out.
    data = data.filter(lambda inputs, labels, weights: tf.reduce_sum(weights) > 0)
    # Tokenized once, not every epoch (a few hundred ints per example); shuffled after.
    data = data.cache()
    if shuffle:
        data = data.shuffle(len(pairs), seed=seed, reshuffle_each_iteration=True)
    padded_shapes = ({"token_ids": [None], "padding_mask": [None]}, [None], [None])
    if bucket_by_sequence_length:
        # Bucket i holds lengths below its bound and is padded to bound - 1: few shapes to trace.
        bounds = [*range(BUCKET_STEP + 1, sequence_length + 1, BUCKET_STEP), sequence_length + 1]
        data = data.bucket_by_sequence_length(
            lambda inputs, labels, weights: tf.shape(labels)[0],
            bucket_boundaries=bounds,
            bucket_batch_sizes=[batch_size] * (len(bounds) + 1),
            padded_shapes=padded_shapes,
            pad_to_bucket_boundary=True,
        )
    else:
        data = data.padded_batch(batch_size, padded_shapes=padded_shapes).map(
            lambda inputs, labels, weights: _pad_to_step(inputs, labels, weights, sequence_length))
    return data.prefetch(tf.data.AUTOTUNE)


def _pad_to_step(inputs, labels, weights, sequence_length):
    """A batch padded on the right to a multiple of `BUCKET_STEP` (at most
    `sequence_length`): few distinct shapes, so few traces of the model."""
    width = tf.shape(labels)[1]
    target = tf.minimum((width + BUCKET_STEP - 1) // BUCKET_STEP * BUCKET_STEP, sequence_length)
    pad = [[0, 0], [0, target - width]]
    inputs = {"token_ids": tf.pad(inputs["token_ids"], pad), "padding_mask": tf.pad(inputs["padding_mask"], pad)}
    return inputs, tf.pad(labels, pad), tf.pad(weights, pad)


def read(path):
    """The records of a JSONL file (`Path` or string)."""
    path = Path(path)
    if path.suffix.lower() not in (".jsonl", ".ndjson"):
        raise CausalLMDataError(f"{path}: causal-lm data is a JSON-lines file (.jsonl) of prompt/completion or messages records.")
    return read_records(path)


def looks_like_causal_lm_data(path):
    """A .jsonl file whose first record has prompt and completion, or messages."""
    path = Path(str(path))
    if path.suffix.lower() not in (".jsonl", ".ndjson") or not path.is_file():
        return False
    fields = set(first_record_fields(path))
    return {"prompt", "completion"} <= fields or "messages" in fields


def prompts_and_references(records):
    """Each record's prompt (a string, or the conversation before its last
    message) and the text the model should answer."""
    prompts, references = [], []
    for record in records:
        if "messages" in record:
            prompts.append(record["messages"][:-1])
            references.append(record["messages"][-1]["content"])
        else:
            prompts.append(record["prompt"])
            references.append(record["completion"])
    return prompts, references


class CausalLM(Task):
    """Causal language modelling: an adapter on a decoder learns the
    completions of prompts (or the answers of conversations), and is judged
    by its perplexity on held-out completions and, for translation and other
    texts with one right answer, by BLEU and chrF of its greedy generations.

    Its model is `AdapterCausalLM` (`decoder`): the hooks below take one.
    """

    name = CAUSAL_LM
    decoder = True
    #: Kept in adapter folders: whether plain prompts were written under the chat template.
    head_settings = ("chat",)
    input_fields = ("prompt",)
    unit = "record"
    signature_verb = "generate"
    served_outputs = "text"
    peft_task_type = "CAUSAL_LM"
    run_options = ("max_new_tokens", "sampler")
    data_formats = "a .jsonl file of prompt/completion or messages records (causal-lm, with a decoder's --preset)"

    def detect(self, path, options):
        return looks_like_causal_lm_data(path)

    def check_data(self, data):
        read(data)

    def read_inputs(self, path, options):
        """Prompts to continue: a JSONL file's records' prompts (as `evaluate`
        reads them), else each line of a text file (`"-"`: standard input)."""
        if Path(str(path)).suffix.lower() in (".jsonl", ".ndjson"):
            return [prompts_and_references(read(path))[0]]
        return super().read_inputs(path, options)

    def count_examples(self, data, options):
        return len(read(data))

    def sample_inputs(self, data, options, count=SAMPLE_SIZE):
        return [prompts_and_references(read(data)[:count])[0]]

    def evaluate(self, model, data, batch_size=8, max_new_tokens=None, **options):
        """`{"perplexity", "loss", "tokens", "bleu", "chrf", "examples"}` of
        `model`'s active adapter on a JSONL file: the perplexity of its
        completions, BLEU and chrF (sacrebleu's defaults) of greedy
        generations against them. Prompts are written as the adapter was
        trained (`model.chat`)."""
        import sacrebleu

        records = read(data)
        report = model.perplexity(records, batch_size=batch_size)
        prompts, references = prompts_and_references(records)
        generations = model.generate(prompts, max_new_tokens=max_new_tokens or MAX_NEW_TOKENS, batch_size=batch_size)
        report["bleu"] = sacrebleu.corpus_bleu(generations, [references]).score
        report["chrf"] = sacrebleu.corpus_chrf(generations, [references]).score
        report["examples"] = len(records)
        return report

    def format_report(self, report):
        return (f"perplexity {report['perplexity']:.3f} (loss {report['loss']:.4f} over {report['tokens']} "
                f"completion tokens); BLEU {report['bleu']:.2f}, chrF {report['chrf']:.2f} on "
                f"{report['examples']} examples")

    def predict(self, model, columns, batch_size=8, max_new_tokens=None, sampler=None):
        """`[{"prompt", "generation"}]`: what the adapter writes after each prompt."""
        prompts = list(columns[0])
        generations = model.generate(prompts, max_new_tokens=max_new_tokens or MAX_NEW_TOKENS,
                                     sampler=sampler or "greedy", batch_size=batch_size)
        return [{"prompt": p, "generation": g} for p, g in zip(prompts, generations)]

    def format_prediction(self, result):
        return result["generation"]


TASK = register_task(CausalLM())
