"""The character token set and the text normaliser shared by training targets and scoring."""

from __future__ import annotations

import re
import unicodedata

from num2words import num2words

BLANK = "<blank>"  # the CTC blank, index 0
TOKENS: tuple[str, ...] = (BLANK, " ", "'", *"abcdefghijklmnopqrstuvwxyz")
BLANK_ID = 0
SPACE_ID = 1
TOKEN_TO_ID = {t: i for i, t in enumerate(TOKENS)}

_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
_NOT_ALLOWED = re.compile(r"[^a-z' ]+")
_SPACES = re.compile(r"\s+")


def _spell_number(match: re.Match) -> str:
    digits = match.group(0).replace(",", "")
    try:
        words = num2words(float(digits) if "." in digits else int(digits))
    except (ValueError, OverflowError):
        words = " ".join(num2words(int(d)) for d in digits if d.isdigit())
    return f" {words} "


def normalize(text: str) -> str:
    """Lowercase, digits spelled out as words, accents folded, punctuation removed, spaces collapsed.

    Apostrophes inside words are kept ("don't"); hyphens and other punctuation separate words.
    """
    text = text.replace("\u2019", "'")  # typographic apostrophe
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii").lower()
    text = _NUMBER.sub(_spell_number, text)
    text = _NOT_ALLOWED.sub(" ", text)
    text = re.sub(r"(?<![a-z])'|'(?![a-z])", " ", text)  # quotes, not apostrophes inside words
    return _SPACES.sub(" ", text).strip()


def encode(text: str) -> list[int]:
    """Normalised text -> token ids (no blanks). Raises ValueError for a character outside the token set."""
    try:
        return [TOKEN_TO_ID[c] for c in text]
    except KeyError as err:
        raise ValueError(
            f"character {err.args[0]!r} is not in the token set; normalize() the text first"
        ) from None


def decode(ids) -> str:
    """Token ids -> text, blanks dropped (no CTC collapsing: see asr.decoding for that)."""
    return "".join(TOKENS[i] for i in ids if i != BLANK_ID)
