import pytest

from asr import text


def test_token_set():
    assert text.TOKENS[0] == text.BLANK and text.TOKENS[1] == " " and text.TOKENS[2] == "'"
    assert "".join(text.TOKENS[3:]) == "abcdefghijklmnopqrstuvwxyz"
    assert len(text.TOKENS) == 29


@pytest.mark.parametrize(
    "raw,norm",
    [
        ("Hello, World!", "hello world"),
        ("Go forward 10 meters.", "go forward ten meters"),
        ("It's 2024 -- the year", "it's two thousand and twenty four the year"),
        ("“Don’t”, she said; 'no'", "don't she said no"),
        ("Café  naïve\tRÉSUMÉ", "cafe naive resume"),
        ("route 66-B at 3.5 km", "route sixty six b at three point five km"),
        ("1,000 people", "one thousand people"),
        ("  ", ""),
    ],
)
def test_normalize(raw, norm):
    assert text.normalize(raw) == norm


def test_encode_decode_roundtrip():
    s = "don't stop"
    ids = text.encode(s)
    assert 0 not in ids and text.decode(ids) == s
    assert text.decode([0, *ids, 0]) == s
    with pytest.raises(ValueError, match="not in the token set"):
        text.encode("Hello")
