from .exemplars import BUILTIN, Exemplar, load_exemplars, parse_wei_prompt
from .templates import (ANSWER_MARK, DEFAULT_TRIGGER, STOP_STRINGS, PromptBuilder, answer_sentence, completion_text,
                        split_rationale, truncate_at_stop)

__all__ = ["ANSWER_MARK", "BUILTIN", "DEFAULT_TRIGGER", "Exemplar", "PromptBuilder", "STOP_STRINGS", "answer_sentence",
           "completion_text", "load_exemplars", "parse_wei_prompt", "split_rationale", "truncate_at_stop"]
