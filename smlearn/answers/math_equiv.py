"""Optional math answer equivalence with math-verify (``pip install 'smlearn[math]'``).

A number answer written as LaTeX or as an expression ("\\frac{1}{2}", "$2^{3}$", "\\sqrt{16}",
"3 \\cdot 4") is read by math-verify (Hugging Face's LaTeX/sympy answer parser) and turned into
smlearn's canonical number string, so it compares with a gold "0.5" like any other number.
Plain answers ("18", "2.5", "7/2", "\\frac{1}{2}" with digits only) never need it.

Timeouts: math-verify's own timeout uses ``signal.alarm``, which only works on the main thread (it
raises ValueError in worker threads, e.g. under a DataLoader or a thread pool). We call it with its
timeouts off and run each call in a daemon thread that we wait for at most `TIMEOUT_SECONDS`: a call
that takes longer gives no answer (counted as wrong) and works from any thread. A runaway sympy call
is left to finish in its daemon thread; it cannot block the caller or the interpreter's exit.
"""
from __future__ import annotations

import functools
import importlib.util
import logging
import re
import threading
from fractions import Fraction
from typing import Any, Callable

TIMEOUT_SECONDS = 5.0

# Text that plain number parsing cannot read: LaTeX commands, powers, braces, inline math.
_MATH_MARKERS_RE = re.compile(r"\\[A-Za-z]+|\^|[{}]")


def available() -> bool:
    """Whether the math-verify package (the `math` extra) is installed."""
    return importlib.util.find_spec("math_verify") is not None


def looks_like_math(text: str) -> bool:
    return bool(_MATH_MARKERS_RE.search(text))


def call_with_timeout(fn: Callable[[], Any], timeout: float) -> tuple[bool, Any]:
    """(finished, value) of `fn()` run in a daemon thread waited for at most `timeout` seconds; safe off the
    main thread (no signals). An exception inside `fn` counts as finished with value None."""
    box: dict[str, Any] = {}

    def target():
        try:
            box["value"] = fn()
        except Exception:  # noqa: BLE001 - math-verify/sympy raise many kinds on odd input: no answer
            box["value"] = None

    thread = threading.Thread(target=target, name="smlearn-math-verify", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        return False, None
    return True, box.get("value")


@functools.lru_cache(maxsize=1)
def _math_verify():
    import math_verify
    # We supply the timeout (call_with_timeout), so its "timeout is disabled" warning is not for users.
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    return math_verify


def _value(text: str) -> Fraction | None:
    mv = _math_verify()
    parsed = mv.parse(text if "$" in text else f"${text}$", parsing_timeout=None)
    if not parsed:
        return None
    expr = parsed[0]
    if not getattr(expr, "is_number", False):
        return None
    if expr.is_Rational:
        return Fraction(int(expr.p), int(expr.q))
    value = complex(expr.evalf())
    if value.imag or value.real != value.real or value.real in (float("inf"), float("-inf")):
        return None
    return Fraction(value.real)


@functools.lru_cache(maxsize=65536)
def math_number(text: str, timeout: float = TIMEOUT_SECONDS) -> Fraction | None:
    """The numeric value of a LaTeX or expression answer, or None (not a number, not installed, timed out)."""
    if not available():
        return None
    finished, value = call_with_timeout(lambda: _value(text), timeout)
    return value if finished else None
