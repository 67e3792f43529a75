"""Offline token counting and truncation, as the binding exposes them."""

from __future__ import annotations

from fleetgate._core import count_tokens, truncate_tokens


def test_truncation_keeps_the_first_tokens() -> None:
    assert truncate_tokens("hello world", 1, "gpt-4o") == ("hello", True)
    assert truncate_tokens("hello world", 2, "gpt-4o") == ("hello world", False)
    assert truncate_tokens("hello world", 0, "gpt-4o") == ("", True)
    text = "The quick brown fox jumps over the lazy dog. " * 2_000  # long: counted without the GIL
    head, cut = truncate_tokens(text, 1_000, "gpt-4.1-mini")
    assert cut and text.startswith(head)
    assert count_tokens("gpt-4.1-mini", head) == 1_000


def test_truncation_never_splits_a_character() -> None:
    text = "𠜎𠜱𠝹𠱓 👩‍👩‍👧‍👦 ünïcödé 龘龘龘 🦀🦀"
    total = count_tokens("gpt-4", text)
    heads = [truncate_tokens(text, n, "gpt-4")[0] for n in range(total + 1)]
    for n, head in enumerate(heads):
        assert text.startswith(head), (n, head)
        assert count_tokens("gpt-4", head) <= n
    assert heads[-1] == text
    assert any(count_tokens("gpt-4", h) < n for n, h in enumerate(heads)), "some cut fell inside a character"
