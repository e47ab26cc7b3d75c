"""Answers for people from the active adapter: entities, answers to questions.

A mixin of `AdapterModel`; the work is its task's (`tasks.token_classification`,
`tasks.question_answering`).
"""

from keras_adapters.tasks import question_answering
from keras_adapters.tasks import token_classification


class AnswersMixin:
    """`predict_entities`, `answer`, `answer_examples`, `windows`."""

    def predict_entities(self, texts, batch_size=32):
        """The entities the active tagging adapter finds in each text (see
        `tasks.token_classification.predict_entities`)."""
        token_classification.TASK.require_active(self, "predict_entities")
        return token_classification.predict_entities(self, texts, batch_size)

    def answer(self, question, context, batch_size=32, max_answer_length=None):
        """The best answer to each question in its context, from the active
        question-answering adapter.

        Args:
            question, context: a string each, or two equally long lists.
            max_answer_length: the longest answer in tokens (default: the
                head's, 30).

        Returns:
            `{"answer", "start", "end", "score"}` (a list of them for lists):
            `context[start:end] == answer` (character offsets), `score` the
            span's start x end probability. A context without a word gives
            an empty answer with score 0.
        """
        question_answering.TASK.require_active(self, "answer")
        single = isinstance(question, str)
        questions, contexts = ([question], [context]) if single else (list(question), list(context))
        if single != isinstance(context, str) or len(questions) != len(contexts):
            raise ValueError("Pass one question and one context, or two equally long lists of them.")
        if not questions:
            return []
        examples = [{"question": str(q), "context": str(c), "answers": []} for q, c in zip(questions, contexts)]
        found = self.answer_examples(examples, batch_size, max_answer_length)
        return found[0] if single else found

    def answer_examples(self, examples, batch_size=32, max_answer_length=None):
        """`answer` for `read_squad` examples, in their order."""
        question_answering.TASK.require_active(self, "answer_examples")
        return question_answering.answer_examples(self, examples, batch_size, max_answer_length)

    def windows(self):
        """The `QuestionWindows` the active question-answering head was trained with."""
        return question_answering.windows(self)
