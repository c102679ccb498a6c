from .load import load_jsonl_examples, load_split
from .schema import KINDS, Example, example_from_row

__all__ = ["Example", "KINDS", "example_from_row", "load_jsonl_examples", "load_split"]
