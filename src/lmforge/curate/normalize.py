"""Text normalization, the first curation step: one canonical form for every document.

On top of a canonical layout (NFC, Unix line ends, no trailing whitespace, at most two blank
lines in a row, indentation kept), this repairs broken encodings with ftfy and removes control
characters.

ftfy runs with a narrow configuration: it repairs what is broken (mojibake such as
"Whoâ€™s" -> "Who's", inconsistent UTF-8, C1 controls that stand for Windows-1252
characters, lone surrogates, odd line separators) and changes nothing that is merely a
style choice of the author: curly quotes stay curly (`uncurl_quotes=False`), ligatures and
full-width characters stay (`fix_latin_ligatures`/`fix_character_width` off: both are
compatibility rewrites that alter CJK and typeset text), and HTML entities stay
(`unescape_html=False`: in code and documentation "&lt;" is often the content itself).
"""

from __future__ import annotations

import re
import unicodedata
from functools import cache
from typing import Any

from lmforge.errors import LmforgeError

# More than two blank lines in a row carry no meaning (PEP 8 code uses at most two).
_EXTRA_BLANK_LINES = re.compile(r"\n{4,}")


def _basic_normalize(text: str) -> str:
    """Unicode NFC; Unix line ends; no trailing whitespace on any line; at most two blank
    lines in a row; no blank lines at the start or end. Leading indentation is kept (code)."""
    text = unicodedata.normalize("NFC", text)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    text = _EXTRA_BLANK_LINES.sub("\n\n\n", text)
    return text.strip("\n")

_FTFY_SETTINGS = dict(
    unescape_html=False,
    remove_terminal_escapes=True,
    fix_encoding=True,
    restore_byte_a0=True,
    replace_lossy_sequences=True,
    decode_inconsistent_utf8=True,
    fix_c1_controls=True,
    fix_latin_ligatures=False,
    fix_character_width=False,
    uncurl_quotes=False,
    fix_line_breaks=True,
    fix_surrogates=True,
    remove_control_chars=True,
    normalization="NFC",
    explain=False,
)


@cache
def _ftfy() -> tuple[Any, Any]:
    """ftfy's fix_text and its config, imported on first need (pure-ASCII text never needs
    it), with a clear message where the package is missing."""
    try:
        import ftfy
    except ImportError:
        raise LmforgeError("repairing text encodings needs the ftfy package, not installed",
                           hint="pip install ftfy, or normalize with fix_encoding=False"
                           ) from None
    return ftfy.fix_text, ftfy.TextFixerConfig(**_FTFY_SETTINGS)


# "”" is E2 80 9D in UTF-8; read as Windows-1252, 0x9D is unassigned and is often dropped,
# leaving a bare "â€" that no decoder can repair (TinyStories V1 holds thousands). Where "â€"
# is not followed by any character a continuation byte 0x80-0xBF decodes to, a byte was lost;
# in a document whose opening quotes broke the same way ("â€œ" for "“") it was "”".
_CONTINUATIONS = "".join(sorted({bytes([b]).decode("cp1252", errors="ignore") or chr(b)
                                 for b in range(0x80, 0xC0)}))
_BARE_MOJIBAKE_QUOTE = re.compile("\u00e2\u20ac(?![" + re.escape(_CONTINUATIONS) + "])")


def _restore_lost_right_quotes(text: str) -> str:
    if "\u00e2\u20ac\u0153" not in text:  # no "â€œ": no evidence of broken quotes
        return text
    return _BARE_MOJIBAKE_QUOTE.sub("\u201d", text)


# C0 and C1 control characters except tab and newline ("\r" is turned into "\n" first).
_CONTROL_CHARS = {c: None for c in (*range(0, 32), *range(127, 160)) if c not in (9, 10)}


def normalize_text(text: str, fix_encoding: bool = True) -> str:
    """The canonical form of `text`: encodings repaired (when `fix_encoding`), Unicode NFC,
    control characters removed (tab and newline kept), "\\r\\n" and "\\r" turned into "\\n",
    trailing whitespace removed from every line, at most two blank lines in a row, no blank
    lines at the start or end. Leading indentation is kept (code and documentation)."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    # Pure ASCII cannot hold mojibake, and ftfy is the slowest step: skip it there.
    if fix_encoding and not text.isascii():
        fix_text, config = _ftfy()
        text = fix_text(_restore_lost_right_quotes(text), config)
    text = text.translate(_CONTROL_CHARS)
    return _basic_normalize(text)
