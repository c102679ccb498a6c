"""The text format, in one place: the prompts, the answer sentence, and where a generation stops.

Every text the pipeline writes or reads follows the few-shot chain-of-thought
layout of Wei et al.: "Q: <question>\nA: <rationale> The answer is X." The
three prompts of the method (`PromptBuilder`):

- `cot(q)`: free chain of thought → the model writes "<rationale> The answer is X."
- `hint(q, candidate)`: answer-conditioned rationalization (STaR's hint): the
  prompt shows a candidate answer and the model writes reasoning for it.
- `final_answer(q, rationale)`: the hint-free final answer step: question and
  rationale, then the trigger ("The answer is"); the model completes the answer.

A trained model's target is `completion_text` (rationale, then the answer
sentence); a generation ends at the first of `STOP_STRINGS` (`truncate_at_stop`).
The reasoning lab's pretraining corpus is written with the same builder, so its
documents are exactly what the pipeline prompts. Chat models get the same text
as user turns (exemplars as earlier turns) through the tokenizer's chat template.
"""
from __future__ import annotations

from dataclasses import dataclass

from .exemplars import Exemplar

# The words that open the answer sentence ("The answer is 18."); `prompts.trigger` may set others.
DEFAULT_TRIGGER = "The answer is"
# Where the model's part of a document starts: after the question (and hint) lines.
ANSWER_MARK = "\nA:"
# A made-up next question or a blank line ends an answer.
STOP_STRINGS = ["\nQ:", "\n\n"]


def truncate_at_stop(text: str, stop_strings=STOP_STRINGS) -> str:
    """`text` up to the first occurrence of any stop string."""
    cut = len(text)
    for s in stop_strings:
        i = text.find(s)
        if 0 <= i < cut:
            cut = i
    return text[:cut]


def answer_sentence(answer: str, trigger: str = DEFAULT_TRIGGER) -> str:
    """"The answer is 18.": the sentence that ends every rationale."""
    return f"{trigger} {answer}."


def completion_text(rationale: str, answer: str, trigger: str = DEFAULT_TRIGGER) -> str:
    """The target a trained model writes after "A:": rationale, then the answer sentence."""
    return f" {rationale.strip()} {answer_sentence(answer, trigger)}"


def split_rationale(text: str, trigger: str) -> tuple[str, str | None]:
    """Cut generated text at a stop string and split it into (rationale, stated answer or None)."""
    text = truncate_at_stop(text)
    idx = text.find(trigger)
    if idx < 0:
        return text.strip(), None
    stated = text[idx + len(trigger):].strip()
    stated = stated.split("\n")[0].strip().rstrip(".").strip()
    return text[:idx].strip(), stated


@dataclass
class PromptBuilder:
    exemplars: list[Exemplar]
    trigger: str = DEFAULT_TRIGGER
    n_shots: int = 4
    tokenizer: object | None = None   # needed only with chat_template
    chat_template: bool = False

    @property
    def shots(self) -> list[Exemplar]:
        return self.exemplars[: self.n_shots]

    # -- the three prompts --------------------------------------------------
    def cot(self, question: str, few_shot: bool = True) -> str:
        return self._render([(self._q(e.question), self._a(e)) for e in self._shots(few_shot)], self._q(question))

    def hint(self, question: str, candidate: str, few_shot: bool = True) -> str:
        turns = [(self._q(e.question, e.answer), self._a(e)) for e in self._shots(few_shot)]
        return self._render(turns, self._q(question, candidate))

    def final_answer(self, question: str, rationale: str, few_shot: bool = True) -> str:
        """cot(question), the rationale, then the trigger, one space where they meet.

        Only the joins are normalized: the prompt starts with exactly cot(question)
        (questions may hold double spaces, as in CommonsenseQA), and the rationale
        reads as in the SFT and pair completions (`completion_text`).
        """
        parts = [self.cot(question, few_shot).rstrip(), rationale.strip(), self.trigger.strip()]
        return " ".join(p for p in parts if p)

    # -- rendering ----------------------------------------------------------
    def _shots(self, few_shot: bool) -> list[Exemplar]:
        return self.shots if few_shot else []

    def _q(self, question: str, hint: str | None = None) -> str:
        text = f"Q: {question.strip()}"
        if hint is not None:
            text += f"\nHint: the answer is {hint}."
        return text

    def _a(self, e: Exemplar) -> str:
        return completion_text(e.rationale, e.answer, self.trigger).strip()

    def _render(self, shots: list[tuple[str, str]], query: str) -> str:
        if self.chat_template:
            messages = []
            for q, a in shots:
                messages += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
            messages.append({"role": "user", "content": query})
            # The assistant turn is opened; generation continues from here.
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) + "A:"
        blocks = [f"{q}{ANSWER_MARK} {a}" for q, a in shots] + [f"{query}{ANSWER_MARK}"]
        return "\n\n".join(blocks)
