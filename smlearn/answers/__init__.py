"""Answers by kind (number, choice, yes_no, text): parsing, canonical forms and comparison.

The base every stage builds on: `data` checks gold answers with it, `generate`,
`collect` and `train` read the answers their generations state, `evaluate`
scores test completions with it. `extract.py` holds the rules; `math_equiv.py`
the optional math-verify reading of LaTeX and expression answers.
"""
from .extract import (KINDS, InvalidGoldError, UnknownKindError, answer_text_after, answers_match,
                      cut_at_next_question, extract_answer, normalize_answer, parse_gold_number, set_math_verify)

__all__ = ["KINDS", "InvalidGoldError", "UnknownKindError", "answer_text_after", "answers_match",
           "cut_at_next_question", "extract_answer", "normalize_answer", "parse_gold_number", "set_math_verify"]
