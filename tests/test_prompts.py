"""fleetgate.prompts: the filler compressor keeps every number, negation and name of real
prompts (checked by an extractor independent of the compressor) while saving tokens; the
layout report tells a template whose changing part comes first from a cache-friendly one,
from token counts only."""

from __future__ import annotations

import copy
import re
import threading
from dataclasses import dataclass, field
from typing import Any

import pytest

from fleetgate._core import count_tokens
from fleetgate.prompts import (
    Compressed,
    Compressor,
    LayoutTracker,
    analyze,
    compress_body,
    flatten,
    render_report,
)

MODEL = "gpt-4.1-mini"


@dataclass(frozen=True)
class Prompt:
    name: str
    text: str
    keep: tuple[str, ...] = ()      # must survive verbatim, in this order
    repeats: bool = False           # holds a sentence repeated verbatim (the copy may go)
    absent: tuple[str, ...] = field(default=())   # filler that must be gone


PROMPTS = [
    Prompt("support", (
        "You are the support assistant for Acme Corp. Please note that you must never promise a refund above "
        "$500 without approval from a Team Lead. In order to verify a customer, kindly ask for the order number "
        "(format AC-123456) and the email on the account. It is important to note that orders ship from our "
        "warehouse in New York within 2 business days. Make sure to answer in the customer's language at all "
        "times. If you cannot find the order, please escalate to support@acme-corp.com."),
        keep=("Acme Corp", "Team Lead", "AC-123456", "New York", "support@acme-corp.com"),
        absent=("Please note that", "In order to", "kindly", "It is important to note that", "Make sure to")),
    Prompt("legal", (
        "You are a contract review assistant for Baker & Lowe LLP. I would like you to flag every clause that "
        "deviates from the firm's standard terms. Please be aware that the governing law is the State of Delaware "
        "unless the contract says otherwise. In the event that a termination clause gives less than 30 days' "
        "notice, mark it as HIGH risk. Do not provide legal advice to the counterparty under any circumstances. "
        "Due to the fact that drafts change often, always cite the clause number, e.g. Section 12.3(b)."),
        keep=("Baker & Lowe LLP", "State of Delaware", "HIGH", "Section 12.3(b)"),
        absent=("I would like you to", "Please be aware that", "In the event that", "Due to the fact that")),
    Prompt("finance", (
        "You are FinBot, an assistant for Northwind Bank. Please note that the savings rate is 3.5% APY and the "
        "overdraft fee is $35 per item, with a maximum of 3 fees per day. It should be noted that transfers above "
        "$10,000 require a second approval. Never quote exchange rates; point customers to "
        "https://northwind.example/rates instead. In order to calculate interest, use the formula "
        "`balance * rate / 365`. Basically, round amounts to 2 decimal places and do not round percentages."),
        keep=("FinBot", "Northwind Bank", "3.5% APY", "$35", "$10,000", "https://northwind.example/rates",
              "`balance * rate / 365`"),
        absent=("Please note that", "It should be noted that", "In order to", "Basically")),
    Prompt("medical", (
        "You are a clinical information assistant reviewed by Dr. Ana Müller. Please note that adults must not "
        "exceed 4,000 mg of paracetamol in 24 hours. For children under 12, doses are weight-based: 15 mg/kg "
        "every 4 to 6 hours, with no more than 5 doses in 24 hours. It is important to note that you cannot "
        "diagnose conditions. In the event that a user reports chest pain, tell them to call 911 immediately. "
        "Kindly remind users that this information does not replace a doctor's advice."),
        keep=("Dr. Ana Müller", "must not exceed 4,000 mg of paracetamol in 24 hours", "15 mg/kg", "911"),
        absent=("Please note that", "It is important to note that", "In the event that", "Kindly")),
    Prompt("code", (
        "You are a senior Python reviewer. Please make sure that every function has type hints. Under no "
        "circumstances suggest `eval()` or `exec()`.\n"
        "Example of the expected style:\n"
        "```python\n"
        "def add(a: int, b: int) -> int:\n"
        "    # please note that  this is   an example\n"
        "    return a + b\n"
        "```\n"
        "In order to keep reviews short, limit yourself to 5 comments per file. Feel free to reference PEP 8 "
        "and PEP 484."),
        keep=("Python", "Under no circumstances", "`eval()`", "`exec()`",
              "```python\ndef add(a: int, b: int) -> int:\n    # please note that  this is   an example\n"
              "    return a + b\n```", "PEP 8", "PEP 484"),
        absent=("Please make sure", "In order to", "Feel free to")),
    Prompt("placeholders", (
        "You are {assistant_name}, helping {{customer.first_name}} with their booking {booking_id}. Please note "
        "that check-in opens at 15:00 and check-out is at 11:00. I would like you to confirm the dates "
        "{check_in} to {check_out} before making any change. Please do not change bookings within 48 hours of "
        "arrival. Make sure to mention the cancellation fee of 20% when relevant."),
        keep=("{assistant_name}", "{{customer.first_name}}", "{booking_id}", "15:00", "11:00", "{check_in}",
              "{check_out}", "48 hours", "20%"),
        absent=("Please note that", "I would like you to", "Make sure to")),
    Prompt("travel", (
        "You plan business trips for employees of Globex Corporation. Please keep in mind that the travel policy "
        "changed on 2026-11-25: economy class is required for flights under 6 hours. Prior to booking, check the "
        "traveller's loyalty number with Delta Air Lines or United Airlines. Hotels in New York must not exceed "
        "$350 per night. It is worth noting that weekend stays are never reimbursed."),
        keep=("Globex Corporation", "2026-11-25", "Delta Air Lines", "United Airlines", "New York", "$350"),
        absent=("Please keep in mind that", "Prior to", "It is worth noting that")),
    Prompt("hr", (
        "You answer HR questions for the staff of Initech GmbH in Berlin. Never share salary information about "
        "another employee. Please note that employees get 30 days of paid leave per year, and unused days expire "
        "on March 31. As a matter of fact, parental leave is governed by German law (BEEG). Never share salary "
        "information about another employee."),
        keep=("Initech GmbH", "Berlin", "30 days", "March 31", "German", "BEEG"), repeats=True,
        absent=("Please note that", "As a matter of fact")),
    Prompt("sales", (
        "You draft replies for the sales team at Contoso Ltd. Please note that prices are listed at "
        "https://contoso.example/pricing and quotes above €25,000 need sign-off from maria.lopez@contoso.example. "
        "Feel free to suggest the Enterprise plan, but don't offer discounts larger than 15%. Make sure that every "
        "reply is signed as \"The Contoso Sales Team\"."),
        keep=("Contoso Ltd", "https://contoso.example/pricing", "€25,000", "maria.lopez@contoso.example",
              "Enterprise", "don't", "15%", "\"The Contoso Sales Team\""),
        absent=("Please note that", "Feel free to", "Make sure that")),
    Prompt("routing", (
        "You are a routing assistant. Please note that GPT-4o handles images, while gpt-4.1-mini handles short "
        "text. In order to save costs, send requests under 2,000 tokens to gpt-4.1-mini. It is important to note "
        "that requests with PII must not be sent to external vendors. Basically, if a request needs more than "
        "128k tokens of context, reject it with error code E_TOO_LONG."),
        keep=("GPT-4o", "gpt-4.1-mini", "2,000", "PII", "must not", "128k", "E_TOO_LONG"),
        absent=("Please note that", "In order to", "It is important to note that", "Basically")),
    Prompt("tutor", (
        "You are a maths tutor for students at Lincoln High School. Please note that students are aged 14 to 16. "
        "I want you to guide them step by step and never give the final answer directly. In the event that a "
        "student is stuck for more than 3 attempts, give a hint. Make sure to use metric units, e.g. 9.81 m/s² "
        "for gravity. Needless to say, do not mock wrong answers."),
        keep=("Lincoln High School", "14 to 16", "never give", "3 attempts", "9.81 m/s²", "not mock"),
        absent=("Please note that", "I want you to", "In the event that", "Make sure to", "Needless to say")),
    Prompt("listings", (
        "You write listings for Harbor View Realty in San Francisco. Please be aware that the Fair Housing Act "
        "forbids mentioning protected characteristics. Kindly include the price (for example $1,250,000), the "
        "square footage and the year built (e.g. 1998). Due to the fact that buyers compare listings, always state "
        "the HOA fee per month. Do not use the words 'luxury' or 'exclusive'."),
        keep=("Harbor View Realty", "San Francisco", "Fair Housing Act", "$1,250,000", "1998", "HOA",
              "'luxury'", "'exclusive'"),
        absent=("Please be aware that", "Kindly", "Due to the fact that")),
    Prompt("translate", (
        "Translate the user's text into Spanish. Please note that brand names such as Microsoft Teams, iPhone "
        "and PlayStation 5 must not be translated. It is important to note that dates like 25/11/2026 must keep "
        "the day-month order. In order to keep the tone, preserve formal \"usted\" address. Don't add "
        "explanations or notes."),
        keep=("Spanish", "Microsoft Teams", "iPhone", "PlayStation 5", "25/11/2026", "\"usted\"", "Don't"),
        absent=("Please note that", "It is important to note that", "In order to")),
    Prompt("security", (
        "You are the security triage bot for the SOC team at Umbrella Inc. Please note that alerts with severity "
        "9 or 10 must be escalated within 15 minutes. Under no circumstances should you close an alert tagged "
        "CVE-2024-3094 without a human review. For the purpose of triage, treat 10.0.0.0/8 addresses as "
        "internal. Make sure to include the alert id in every summary.\n\n\n\nFeel free to ask for logs from "
        "Splunk."),
        keep=("SOC", "Umbrella Inc", "9 or 10", "15 minutes", "Under no circumstances", "CVE-2024-3094",
              "without", "10.0.0.0/8", "Splunk"),
        absent=("Please note that", "For the purpose of", "Make sure to", "\n\n\n", "Feel free to")),
    Prompt("retention", (
        "You   are a retention agent for Stellar Mobile.   \n"
        "Please note that customers on the Unlimited Plus plan pay $65 per month.\t\tIn order to retain them, you "
        "may offer up to 2 months at 50% off.\n\n\n\n"
        "You are required to log every offer in Salesforce. Do not offer the discount twice to the same account "
        "number."),
        keep=("Stellar Mobile", "Unlimited Plus", "$65", "2 months", "50%", "Salesforce", "Do not offer"),
        absent=("Please note that", "In order to", "You are required to", "   ", "\t", "\n\n\n")),
    Prompt("nutrition", (
        "You are a nutrition assistant for FitLife. Do not recommend supplements to pregnant users. Please note "
        "that the daily sodium limit is 2,300 mg for adults and 1,500 mg for users over 51. In order to plan "
        "meals, ask about allergies first, following the USDA guidelines. Do not recommend supplements to "
        "pregnant users."),
        keep=("FitLife", "2,300 mg", "1,500 mg", "51", "USDA"), repeats=True,
        absent=("Please note that", "In order to")),
    Prompt("airline", (
        "You assist passengers of Aurora Airlines. At this point in time, checked bags cost $30 for the first bag "
        "and $45 for the second bag. Please note that flight AU 207 from Chicago to Reykjavík departs at 07:45 "
        "local time. With regard to refunds, tickets are non-refundable unless the flight is cancelled. Each and "
        "every response must include the booking reference."),
        keep=("Aurora Airlines", "$30", "$45", "AU 207", "Chicago", "Reykjavík", "07:45", "unless"),
        absent=("At this point in time", "Please note that", "With regard to", "Each and every")),
]

# An extractor that knows nothing of the compressor's lexicon.
_NUMBER = re.compile(r"(?<!\d)[$€£]?\d+(?:[.,:/-]\d+)*%?")
_NEGATION = re.compile(
    r"\b(?:not|no|never|none|nor|neither|cannot|can't|don't|doesn't|won't|isn't|aren't|shouldn't|mustn't|"
    r"didn't|wouldn't|couldn't|without)\b", re.IGNORECASE)
_LIST_MARK = re.compile(r"[ \t]*(?:[-*#>]+|\d+[.)])")
_WORD = re.compile(r"[^\W\d_][\w'’-]*")


def _entities(text: str) -> list[tuple[int, str]]:
    """(position, word) of capitalised words that do not start a sentence, ALL-CAPS words,
    and words with an inner capital or a digit ("GPT-4o", "iPhone")."""
    found = []
    for m in _WORD.finditer(text):
        word, before = m.group(), text[:m.start()].rstrip(" \t")
        line = before[before.rfind("\n") + 1:]
        initial = not line or line[-1] in ".!?:" or _LIST_MARK.fullmatch(line) is not None
        if word == "I":
            continue
        if ((word.isupper() and len(word) > 1) or any(c.isupper() for c in word[1:])
                or any(c.isdigit() for c in word) or (not initial and word[0].isupper())):
            found.append((m.start(), word))
    return found


def _items(text: str) -> list[tuple[str, str]]:
    """(kind, text) of every number, negation and entity, in order of appearance (a word
    that is both a negation and a name, "Don't" mid-sentence, counts once)."""
    spans = {(m.start(), m.group()): "number" for m in _NUMBER.finditer(text)}
    spans |= {(m.start(), m.group()): "negation" for m in _NEGATION.finditer(text)}
    for at, word in _entities(text):
        spans.setdefault((at, word), "entity")
    return [(kind, item) for (_, item), kind in sorted(spans.items())]


def _assert_in_order(items: list[tuple[str, str]], text: str, name: str) -> None:
    pos = 0
    for kind, item in items:
        flags = re.IGNORECASE if kind == "negation" else 0
        edge = r"\d" if kind == "number" else r"\w"     # "4" in "GPT-4o" is a number too
        m = re.compile(rf"(?<!{edge}){re.escape(item)}(?!{edge})", flags).search(text, pos)
        assert m, f"{name}: {kind} {item!r} lost or out of order in {text!r}"
        pos = m.start() + 1     # items may overlap ("AC-123456" holds the number "123456")


@pytest.fixture(scope="module")
def compressor() -> Compressor:
    return Compressor(MODEL)


def test_compression_keeps_numbers_negations_and_names_and_saves_tokens(compressor: Compressor) -> None:
    assert len(PROMPTS) >= 15
    total_before = total_saved = 0
    for prompt in PROMPTS:
        done = compressor.compress(prompt.text)
        assert isinstance(done, Compressed)
        items = _items(prompt.text)
        assert len(items) >= 5, prompt.name
        # A dropped repeated sentence takes its copies of the items along: then each item
        # must still be there, first occurrences in order.
        expected = list(dict.fromkeys(items)) if prompt.repeats else items
        _assert_in_order(expected, done.text, prompt.name)
        _assert_in_order([("keep", k) for k in prompt.keep], done.text, prompt.name)
        for filler in prompt.absent:
            assert filler not in done.text, f"{prompt.name}: {filler!r} left in {done.text!r}"
        assert len(done.text) < len(prompt.text), prompt.name
        assert done.tokens_before == count_tokens(MODEL, prompt.text)
        assert done.tokens_after == count_tokens(MODEL, done.text)
        assert done.saved == done.tokens_before - done.tokens_after > 0, prompt.name
        total_before += done.tokens_before
        total_saved += done.saved
    print(f"\n{len(PROMPTS)} prompts: {total_saved} of {total_before} tokens saved ({total_saved / total_before:.1%})")
    assert total_saved >= 0.05 * total_before


def test_repeated_sentence_is_dropped_once(compressor: Compressor) -> None:
    hr = next(p for p in PROMPTS if p.name == "hr")
    done = compressor.compress(hr.text)
    assert done.text.count("Never share salary information about another employee.") == 1
    assert done.text.startswith("You answer HR questions")


@pytest.mark.parametrize(("text", "expected"), [
    ("Please note that refunds take 5 business days.", "Refunds take 5 business days."),
    ("In the event that the API fails, retry in order to recover.", "If the API fails, retry to recover."),
    ("Basically, do not reply.", "Do not reply."),
    ("If unsure, please ask. Reply in English, please.", "If unsure, ask. Reply in English."),
    ("Feel free to ask follow-up questions.", "You may ask follow-up questions."),
    ("Please do not share the key.", "Do not share the key."),
    ("Be polite at all times.", "Be polite always."),
    ("Please note that check-in is at 15:00.", "Check-in is at 15:00."),
    ("Please note that gpt-4o is the default.", "gpt-4o is the default."),
    ("You are required to cite {source}.", "You must cite {source}."),
    ("Reply  in\t\tJSON.   \n\n\n\nThen stop.", "Reply in JSON.\n\nThen stop."),
    ("- Please note that GPT-4o is the default.\n- Kindly use 2026-11-25.",
     "- GPT-4o is the default.\n- Use 2026-11-25."),
])
def test_rewrites(compressor: Compressor, text: str, expected: str) -> None:
    assert compressor.compress(text).text == expected


@pytest.mark.parametrize("text", [
    "You are a support assistant for Acme Corp. Answer in at most 3 sentences. Do not share internal links.",
    "Ask Dr. Kindly about the 2 refunds.",             # a name, not politeness
    "Speak kindly to users and aim to please them.",   # manner, not filler
    "PLEASE NOTE THAT the limit is 5.",                 # shouting is left alone
    "You should keep in mind that limits change.",     # not at a clause start
    "Quote it as \"please note that in order to\" and `in order to`.",
    "Please Contact Support for help. Thanks, kindly.",  # not before a lowercase verb
    "Answer briefly. Use English. Answer briefly.",     # too short to drop a repeat
])
def test_text_without_removable_filler_comes_back_unchanged(compressor: Compressor, text: str) -> None:
    done = compressor.compress(text)
    assert done.text == text
    assert done.saved == 0 and done.tokens_before == done.tokens_after == count_tokens(MODEL, text)


def test_code_fences_quotes_urls_and_placeholders_are_untouched(compressor: Compressor) -> None:
    fence = "```\nplease note that   x  =  1\n\n\n\nin order to  keep {it}\n```"
    tilde = "~~~\nkindly   do\n\n\n~~~"
    text = (f"Please note that the code below is final.\n{fence}\n{tilde}\n"
            "In order to run it, open https://example.com/in%20order%20to and mail please.note@example.com "
            "about {{in order to}} and {prior to}.")
    done = compressor.compress(text)
    for kept in (fence, tilde, "https://example.com/in%20order%20to", "please.note@example.com",
                 "{{in order to}}", "{prior to}"):
        assert kept in done.text
    assert done.text.startswith("The code below is final.")
    assert "To run it" in done.text


def test_extra_fillers_apply_and_are_checked() -> None:
    extra = Compressor(MODEL, extra_fillers={"as per": "per", "going forward": ""})
    assert extra.compress("Bill as per the 2 contracts going forward.").text == "Bill per the 2 contracts."
    for bad in ({"do not": ""}, {"never mind": ""}, {"up to 5": ""}, {"as usual": "not"}, {"it isn't": ""}):
        with pytest.raises(ValueError):
            Compressor(MODEL, extra_fillers=bad)


def test_a_rewrite_that_costs_tokens_is_not_applied() -> None:
    wordy = Compressor(MODEL, extra_fillers={"fine": "acceptable and appropriate in every respect"})
    done = wordy.compress("This is fine.")
    assert done.text == "This is fine." and done.saved == 0


def test_compress_is_memoised_and_bounded() -> None:
    small = Compressor(MODEL, cache_size=2)
    first = small.compress("Please note that A is 1.")
    assert small.compress("Please note that A is 1.") is first
    small.compress("Please note that B is 2.")
    small.compress("Please note that C is 3.")
    assert len(small._cache) == 2
    assert small.compress("Please note that A is 1.") is not first     # evicted, recomputed
    assert small.compress("Please note that A is 1.") == first


def test_compress_body_chat_compresses_system_and_developer_only(compressor: Compressor) -> None:
    user = {"role": "user", "content": "Please note that in order to test, I would like you to reply."}
    body: dict[str, Any] = {
        "model": MODEL,
        "messages": [
            {"role": "system", "content": "Please note that you must not reply in order to stall."},
            {"role": "developer", "content": [{"type": "text", "text": "Kindly answer in 3 lines."},
                                              {"type": "image_url", "image_url": {"url": "https://x.example/a.png"}}]},
            user,
            {"role": "assistant", "content": "Please note that this is kept."},
        ],
    }
    before = copy.deepcopy(body)
    done = compress_body(compressor, "/chat/completions", body)
    assert done is not None
    new, saved = done
    assert body == before                                # the input is not mutated
    assert new is not body and new["messages"] is not body["messages"]
    assert new["messages"][0]["content"] == "You must not reply to stall."
    assert new["messages"][1]["content"][0]["text"] == "Answer in 3 lines."
    assert new["messages"][1]["content"][1] is body["messages"][1]["content"][1]
    assert new["messages"][2] is user and user["content"] == before["messages"][2]["content"]
    assert new["messages"][3] is body["messages"][3]
    expected = sum(compressor.compress(t).saved for t in (
        "Please note that you must not reply in order to stall.", "Kindly answer in 3 lines."))
    assert saved == expected > 0


def test_compress_body_responses_and_nothing_to_do(compressor: Compressor) -> None:
    body = {"model": MODEL, "instructions": "Please note that totals include 20% VAT.",
            "input": [{"role": "user", "content": [{"type": "input_text", "text": "Please note that hi"}]}]}
    before = copy.deepcopy(body)
    done = compress_body(compressor, "/v1/responses", body)
    assert done is not None
    assert done[0]["instructions"] == "Totals include 20% VAT."
    assert done[0]["input"] is body["input"]
    assert body == before and done[1] > 0
    plain = {"model": MODEL, "messages": [{"role": "system", "content": "Answer in 3 lines."},
                                          {"role": "user", "content": "Please note that x"}]}
    assert compress_body(compressor, "/chat/completions", plain) is None
    assert compress_body(compressor, "/embeddings", {"input": "Please note that x"}) is None


# --- layout -------------------------------------------------------------------------------

DISTINCTIVE = "Zanzibar refund escalation ladder"


def _instructions(tokens: int = 1500) -> str:
    rules: list[str] = []
    while count_tokens(MODEL, "\n".join(rules)) < tokens:
        rules.append(f"Rule {len(rules) + 1}: when a customer asks about the {DISTINCTIVE}, check the order status, "
                     "confirm the purchase date and explain the next step in plain language.")
    return "\n".join(rules)


INSTRUCTIONS = _instructions()
QUESTIONS = ["Where is my parcel?", "Can I get a refund for order 1234?", "How do I change my delivery address?",
             "Why was I charged twice this month?", "Is the blue kettle back in stock?"]


def _bad(q: str) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": f"User question: {q}\n\n{INSTRUCTIONS}"}]}


def _good(q: str) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "system", "content": INSTRUCTIONS}, {"role": "user", "content": q}]}


def test_user_input_first_is_dynamic_first_with_advice_to_move() -> None:
    layout = analyze("bad", [flatten("/chat/completions", _bad(q)) for q in QUESTIONS], model=MODEL)
    instruction_tokens = count_tokens(MODEL, INSTRUCTIONS)
    assert layout.dynamic_first
    assert layout.stable_prefix_tokens < 20
    assert layout.stable_tokens >= instruction_tokens - 5
    assert any(line.startswith("Move the ") and "prefix" in line for line in layout.advice)


def test_instructions_first_is_cache_friendly() -> None:
    layout = analyze("good", [flatten("/chat/completions", _good(q)) for q in QUESTIONS], model=MODEL)
    assert not layout.dynamic_first
    assert layout.stable_prefix_tokens >= count_tokens(MODEL, INSTRUCTIONS)
    assert not any("Move" in line for line in layout.advice)


def test_changing_date_early_in_the_system_message_is_found_in_the_middle() -> None:
    prompts = [flatten("/responses", {"instructions": f"Today is 2026-11-{day}. You are a support bot.\n{INSTRUCTIONS}",
                                       "input": q}) for day, q in zip((21, 22, 23, 24, 25), QUESTIONS, strict=True)]
    layout = analyze("dated", prompts, model=MODEL)
    assert layout.dynamic_first
    assert layout.stable_tokens >= count_tokens(MODEL, INSTRUCTIONS)     # the middle block counts
    assert any(line.startswith("Dates, ids or names early in the instructions") for line in layout.advice)


def test_small_stable_prefix_and_small_prompts_are_explained() -> None:
    docs = [f"Document {i}: " + " ".join(f"fact{i}-{j}" for j in range(700)) for i in range(3)]
    prompts = [flatten("/chat/completions", {"messages": [{"role": "system", "content": "Answer from the documents."},
                                                           {"role": "user", "content": d}]}) for d in docs]
    layout = analyze("rag", prompts, model=MODEL)
    assert layout.prompt_tokens >= 1024 and not layout.dynamic_first
    assert any(line.startswith(f"The stable prefix is {layout.stable_prefix_tokens:,} tokens, under the 1,024")
               for line in layout.advice)
    tiny = analyze("tiny", [flatten("/chat/completions", _good(q))[-60:] for q in QUESTIONS[:2]], model=MODEL)
    assert any("under the 1,024 OpenAI needs" in line for line in tiny.advice)


def test_tracker_cached_share_from_chat_and_responses_usage() -> None:
    tracker = LayoutTracker(samples=4, model=MODEL, seed=7)
    for q in QUESTIONS:
        tracker.observe("good", "/chat/completions", _good(q))
    tracker.usage("good", {"prompt_tokens": 2000, "prompt_tokens_details": {"cached_tokens": 1536}})
    tracker.usage("good", {"input_tokens": 2000, "input_tokens_details": {"cached_tokens": 512},
                           "output_tokens": 10})
    tracker.usage("good", {"prompt_tokens": 1000})                     # no details: none cached
    (layout,) = tracker.report()
    assert layout.requests == len(QUESTIONS) and layout.samples == 4
    assert layout.cached_share == pytest.approx((1536 + 512) / 5000)
    bare = LayoutTracker(model=MODEL)
    bare.observe("t", "/chat/completions", _good("a"))
    bare.observe("t", "/chat/completions", _good("b"))
    assert bare.report()[0].cached_share is None


def test_low_cached_share_despite_a_good_prefix_is_reported() -> None:
    prompts = [flatten("/chat/completions", _good(q)) for q in QUESTIONS]
    layout = analyze("good", prompts, model=MODEL, prompt_tokens=10_000, cached_tokens=500)
    assert any(line.startswith("Only 5% of prompt tokens came from the cache") for line in layout.advice)


def test_a_short_common_suffix_counts_as_stable() -> None:
    prompts = [flatten("/chat/completions", {"messages": [{"role": "user", "content": f"{q}\nReply in English."}]})
               for q in ("Where is order 12?", "Refund for 7 items?", "Why 2 charges?")]
    layout = analyze("short", prompts, model=MODEL)
    assert layout.stable_tokens >= layout.stable_prefix_tokens + count_tokens(MODEL, "\nReply in English.")


def test_one_sample_is_not_enough_data() -> None:
    tracker = LayoutTracker(model=MODEL)
    tracker.observe("once", "/chat/completions", _bad("Where is my parcel?"))
    (layout,) = tracker.report()
    assert layout.requests == 1 and layout.samples == 1
    assert not layout.dynamic_first and layout.stable_tokens == 0
    assert "at least 2 are needed" in layout.advice[0]
    assert "unknown" in render_report([layout])


def test_report_never_contains_prompt_text() -> None:
    tracker = LayoutTracker(model=MODEL)
    for q in QUESTIONS:
        tracker.observe("bad", "/chat/completions", _bad(q))
        tracker.observe("good", "/chat/completions", _good(q))
    tracker.observe("once", "/chat/completions", _good(QUESTIONS[0]))
    layouts = tracker.report()
    texts = [render_report(layouts)] + [t.render() for t in layouts] + [repr(t) for t in layouts]
    assert "changing part first" in texts[0] and "bad" in texts[0] and "good" in texts[0]
    for text in texts:
        for secret in (DISTINCTIVE, "Rule 1:", "User question", *QUESTIONS):
            assert secret not in text


def test_flatten_order_tools_instructions_then_messages() -> None:
    tools = [{"type": "function", "function": {"name": "lookup_order", "parameters": {"type": "object"}}}]
    chat = flatten("/chat/completions", {"tools": tools, "messages": [
        {"role": "system", "content": "S"}, {"role": "user", "content": [{"type": "text", "text": "U"}]},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function"}]}]})
    assert chat.index("lookup_order") < chat.index("[system]\nS") < chat.index("[user]\nU") < chat.index("[assistant]")
    responses = flatten("/responses", {"tools": tools, "instructions": "I", "input": "Q"})
    assert responses.index("lookup_order") < responses.index("[instructions]\nI") < responses.index("[user]\nQ")


def test_tracker_keeps_a_bounded_sample_under_threads() -> None:
    tracker = LayoutTracker(samples=8, model=MODEL, seed=3)

    def work(n: int) -> None:
        for i in range(200):
            tracker.observe("t", "/chat/completions", _good(f"question {n}-{i}"))

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    state = tracker._templates["t"]
    assert state.requests == 800 and len(state.samples) == 8
    # A reservoir: later requests get in too, not only the first 8.
    assert any(not s.endswith(("-0", "-1", "-2", "-3", "-4", "-5", "-6", "-7")) for s in state.samples)


def test_long_prompts_are_compared_within_bounds() -> None:
    big = _instructions(12_000)         # ~60k characters
    prompts = [flatten("/chat/completions", {"messages": [{"role": "user", "content": f"{q}\n{big}\nEnd {q}"}]})
               for q in QUESTIONS[:3]]
    assert len(prompts[0]) > 50_000
    layout = analyze("big", prompts, model=MODEL)
    assert layout.dynamic_first and layout.stable_tokens >= count_tokens(MODEL, big) - 5


# -- through the gateway ------------------------------------------------------------------------

class _Recording:
    """An inner transport that keeps the bodies sent upstream."""

    def __init__(self) -> None:
        import httpx2

        self.inner = httpx2.HTTPTransport()
        self.bodies: list[dict[str, Any]] = []

    def handle_request(self, request: Any) -> Any:
        import json

        self.bodies.append(json.loads(request.content))
        return self.inner.handle_request(request)

    def close(self) -> None:
        self.inner.close()


def _client(gate: Any, inner: _Recording) -> Any:
    import httpx2
    import openai

    return openai.OpenAI(api_key="sk-fake", base_url=gate.config.base_url,
                         http_client=httpx2.Client(transport=gate.transport(inner)))  # type: ignore[arg-type]


def test_an_opted_in_feature_is_sent_compressed_and_its_saving_reported(fake_openai: Any) -> None:
    import fleetgate as fg
    from prometheus_client import REGISTRY

    system = PROMPTS[0].text
    gate = fg.Gateway(base_url=fake_openai.base_url, prompts={"compress_features": ["support"]})
    upstream = _Recording()
    client = _client(gate, upstream)
    messages = [{"role": "system", "content": system}, {"role": "user", "content": "Please note that it is broken."}]
    before = REGISTRY.get_sample_value("fleetgate_prompt_tokens_saved_total", {"feature": "support"}) or 0.0
    with gate.scope(feature="support"):
        client.chat.completions.create(model=MODEL, messages=messages)
        client.chat.completions.create(model=MODEL, messages=messages)
    with gate.scope(feature="search"):
        client.chat.completions.create(model=MODEL, messages=messages)
    sent = [b["messages"] for b in upstream.bodies]
    expected = Compressor().compress(system)
    assert expected.saved > 0
    assert sent[0][0]["content"] == expected.text and sent[1][0]["content"] == expected.text
    assert sent[0][1]["content"] == "Please note that it is broken."  # user input is never touched
    assert sent[2] == messages  # a feature that did not opt in goes as written
    assert messages[0]["content"] == system  # the caller's messages are not changed
    saved = REGISTRY.get_sample_value("fleetgate_prompt_tokens_saved_total", {"feature": "support"})
    assert saved == before + 2 * expected.saved
    [saving] = gate.prompt_savings.report()
    assert saving.template == "support" and saving.requests == 2 and saving.tokens_saved == 2 * expected.saved
    assert f"{2 * expected.saved:,} of" in gate.prompt_report()


def test_the_gateway_reports_a_template_whose_user_input_comes_first(fake_openai: Any) -> None:
    import fleetgate as fg

    gate = fg.Gateway(base_url=fake_openai.base_url, prompts={"layout": True})
    client = gate.openai(api_key="sk-fake")
    for q in QUESTIONS:
        with gate.scope(feature="bad-bot"):
            client.chat.completions.create(**_bad(q))
        with gate.scope(feature="good-bot"):
            client.chat.completions.create(**_good(q))
    layouts = {t.template: t for t in gate.layout.report()}  # type: ignore[union-attr]
    assert layouts["bad-bot"].dynamic_first and not layouts["good-bot"].dynamic_first
    assert layouts["bad-bot"].requests == len(QUESTIONS) and layouts["good-bot"].cached_share is not None
    # The fake caches a repeated prefix of 1,024 tokens or more, as OpenAI does: only the good layout gains.
    assert layouts["good-bot"].cached_share > 0.5 and not layouts["bad-bot"].cached_share  # type: ignore[operator]
    report = gate.prompt_report()
    assert "bad-bot: Move the " in report and DISTINCTIVE not in report


def test_the_cli_compresses_a_prompt_file_and_reports_a_requests_files_layout(tmp_path: Any) -> None:
    import json

    from click.testing import CliRunner

    from fleetgate.cli import main as cli

    prompt = tmp_path / "system.txt"
    prompt.write_text(PROMPTS[0].text)
    done = CliRunner().invoke(cli, ["prompts", "compress", str(prompt)])
    expected = Compressor().compress(PROMPTS[0].text)
    assert done.exit_code == 0 and done.stdout == expected.text
    assert f"({expected.saved:,} saved)" in done.stderr
    requests = tmp_path / "requests.jsonl"
    with requests.open("w") as f:
        for q in QUESTIONS:
            f.write(json.dumps({**_bad(q), "metadata": {"template": "bad-bot"}}) + "\n")
            f.write(json.dumps({"custom_id": q, "method": "POST", "url": "/v1/chat/completions",
                                "body": {**_good(q), "metadata": {"template": "good-bot"}}}) + "\n")
    report = CliRunner().invoke(cli, ["prompts", "layout", str(requests)])
    assert report.exit_code == 0, report.output
    rows = {line.split()[0]: line for line in report.output.splitlines() if line.endswith(("ok", "changing part first"))}
    assert rows["bad-bot"].endswith("changing part first") and rows["good-bot"].endswith("ok")
    assert "- bad-bot: Move the " in report.output and DISTINCTIVE not in report.output
    requests.write_text("{not json\n")
    bad = CliRunner().invoke(cli, ["prompts", "layout", str(requests)])
    assert bad.exit_code != 0 and "line 1" in bad.output
