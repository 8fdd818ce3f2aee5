"""Characters a person cannot see, and untrusted text with each of them spelled out as ``⟨U+XXXX⟩``.

An approver judges a held call by reading it (on the approval page or in ``mcp-guard approvals
list``); a character that renders as nothing, as a blank, or that reorders the text around it
(a right-to-left override) could make them read something other than what will run.  Both show
text through this module, so they mark exactly the same characters.
"""

from __future__ import annotations

import bisect
import unicodedata
from functools import lru_cache

# Default_Ignorable_Code_Point, from the Unicode Character Database's DerivedCoreProperties.txt
# (Unicode 15.1): the code points a renderer shows as nothing when it has no
# glyph for them.  ``unicodedata`` does not expose derived properties, so the ranges are listed
# here, first and last code point inclusive:
#   00AD soft hyphen; 034F combining grapheme joiner; 061C Arabic letter mark;
#   115F..1160 Hangul choseong/jungseong fillers; 17B4..17B5 Khmer inherent vowels;
#   180B..180F Mongolian free variation selectors and vowel separator;
#   200B..200F zero-width space, joiners, LRM/RLM; 202A..202E bidi embeddings and overrides;
#   2060..206F word joiner, invisible operators, bidi isolates, deprecated format characters;
#   3164 Hangul filler; FE00..FE0F variation selectors; FEFF zero-width no-break space (BOM);
#   FFA0 halfwidth Hangul filler; FFF0..FFF8 unassigned specials;
#   1BCA0..1BCA3 shorthand format controls; 1D173..1D17A musical beam/tie/slur/phrase controls;
#   E0000..E0FFF tags, variation selectors 17-256 and the rest of that block.
DEFAULT_IGNORABLE: tuple[tuple[int, int], ...] = (
    (0x00AD, 0x00AD), (0x034F, 0x034F), (0x061C, 0x061C), (0x115F, 0x1160), (0x17B4, 0x17B5),
    (0x180B, 0x180F), (0x200B, 0x200F), (0x202A, 0x202E), (0x2060, 0x206F), (0x3164, 0x3164),
    (0xFE00, 0xFE0F), (0xFEFF, 0xFEFF), (0xFFA0, 0xFFA0), (0xFFF0, 0xFFF8), (0x1BCA0, 0x1BCA3),
    (0x1D173, 0x1D17A), (0xE0000, 0xE0FFF),
)
# rendered as an empty cell although they are ordinary letters or symbols: the Braille blank
# (the Hangul fillers and U+034F are Default_Ignorable already)
BLANK: frozenset[int] = frozenset({0x2800})
# controls, format characters, line and paragraph separators; private use, surrogates and
# unassigned code points (no font agrees on them)
CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Co", "Cs", "Cn"})
_STARTS = tuple(first for first, _ in DEFAULT_IGNORABLE)


def default_ignorable(cp: int) -> bool:
    """Whether code point ``cp`` has the Default_Ignorable_Code_Point property."""
    i = bisect.bisect_right(_STARTS, cp) - 1
    return i >= 0 and cp <= DEFAULT_IGNORABLE[i][1]


@lru_cache(maxsize=4096)
def invisible(ch: str) -> bool:
    """A character that could hide or reorder what a person reads: Default_Ignorable, a blank-
    rendering letter, a control, format or separator character, or any space but U+0020.
    Newline is one too: callers that lay text out in lines keep it themselves."""
    cp = ord(ch)
    if 0x20 < cp < 0x7F:
        return False
    cat = unicodedata.category(ch)
    return cat in CATEGORIES or (cat == "Zs" and cp != 0x20) or cp in BLANK or default_ignorable(cp)


def code(ch: str) -> str:
    """``⟨U+XXXX⟩``: how an invisible character is shown."""
    return f"\u27e8U+{ord(ch):04X}\u27e9"


def marked(text: str) -> str:
    """``text`` for a terminal: every invisible character (newline included) as ``⟨U+XXXX⟩``."""
    if text.isascii() and text.isprintable():
        return text
    return "".join(code(ch) if invisible(ch) else ch for ch in text)
