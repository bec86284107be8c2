"""Text that survives naive clients: some paste messages unescaped into HTML attributes.

Messages certbroker writes never hold `'`, `"`, `<`, `>` or control characters: they quote
with typographic quotes, and text from outside (a name as sent, a fetched body, a DNS answer)
goes through `safe_text`, which renders those characters harmless but still recognisable.
"""

from __future__ import annotations

# Typographic look-alikes: the reader still sees quotes and angle brackets.
_LOOK_ALIKES = {"'": "\u2019", '"': "\u201d", "<": "\u2039", ">": "\u203a"}
_TABLE = {ord(plain): fancy for plain, fancy in _LOOK_ALIKES.items()}


def _escape(char: str) -> str:
    code = ord(char)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def safe_text(text: str, limit: int | None = None) -> str:
    """`text` with quotes and angle brackets as look-alikes and control or other unprintable
    characters as `\\xNN`; cut to `limit` characters (with `…`) when given."""
    if limit is not None and len(text) > limit:
        text = text[:limit] + "\u2026"
    if text.isprintable() and not any(c in text for c in _LOOK_ALIKES):
        return text  # the common case, without a copy
    return "".join(c if c.isprintable() else _escape(c) for c in text.translate(_TABLE))


def quoted(text: str, limit: int | None = None) -> str:
    """`‘text’`: how messages quote a value, instead of repr()."""
    return f"\u2018{safe_text(text, limit)}\u2019"
