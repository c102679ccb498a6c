from .exemplars import BUILTIN, Exemplar, load_exemplars, parse_wei_prompt
from .templates import STOP_STRINGS, PromptBuilder, completion_text, split_rationale

__all__ = ["BUILTIN", "Exemplar", "PromptBuilder", "STOP_STRINGS", "completion_text", "load_exemplars",
           "parse_wei_prompt", "split_rationale"]
