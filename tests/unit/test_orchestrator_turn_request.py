"""SendMessage request validation (orchestrator.md "The turn"; affinity.md scope; memory.md scope)."""

from types import SimpleNamespace

import pytest

from services.orchestrator.domain.turn_request import (
    PromptTrait,
    TurnRequestError,
    kept_traits,
    validate_turn_request,
)

ULID = "01HZX3J6Q8M4W2V7R9T5K1N0PB"  # 26 chars
UUID = "3f2b8c1e-9a4d-4e6f-8b7a-2c1d0e9f8a7b"  # 36 chars
TIERS = frozenset({"premium"})


def request(**overrides):
    fields = {"content": "hello there", "client_msg_id": ULID, "known_tiers": TIERS, **overrides}
    return validate_turn_request(**fields)


def trait(tag="formality", text="Be formal."):
    return {"tag": tag, "text": text}


def test_defaults():
    validated = request(content="  hi  ")
    assert validated.content == "hi"
    assert validated.tier is None
    assert validated.prompt_traits == ()
    assert validated.memory_scope == "neutral_and_relationship"
    assert validated.affinity_scope == "bond"
    assert validated.affinity_axes == ("warmth", "intimacy", "tension")
    assert validated.audit is None


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"content": ""}, "content"),
        ({"content": "   \n\t "}, "content"),
        ({"content": "x" * 4097}, "content"),
        ({"content": None}, "content"),
        ({"client_msg_id": ULID[:25]}, "client_msg_id"),
        ({"client_msg_id": "x" * 37}, "client_msg_id"),
        ({"client_msg_id": ULID[:20] + " " + ULID[21:]}, "client_msg_id"),
        ({"client_msg_id": ULID[:25] + "é"}, "client_msg_id"),
        ({"client_msg_id": ULID[:25] + "\x7f"}, "client_msg_id"),
        ({"client_msg_id": None}, "client_msg_id"),
        ({"tier": "gold"}, "tier"),
        ({"prompt_traits": [trait(f"t{i}") for i in range(9)]}, "prompt_traits"),
        ({"prompt_traits": [trait("Bad-Tag")]}, "prompt_traits[0].tag"),
        ({"prompt_traits": [trait("")]}, "prompt_traits[0].tag"),
        ({"prompt_traits": [trait("a" * 33)]}, "prompt_traits[0].tag"),
        ({"prompt_traits": [trait("ok"), trait("ok")]}, "prompt_traits[1].tag"),
        ({"prompt_traits": [trait(text="")]}, "prompt_traits[0].text"),
        ({"prompt_traits": [trait(text="y" * 2001)]}, "prompt_traits[0].text"),
        ({"prompt_traits": [{"tag": "ok"}]}, "prompt_traits[0].text"),
        ({"memory_scope": "everything"}, "memory_scope"),
        ({"affinity_scope": "romance"}, "affinity_scope"),
        ({"affinity_scope": ["warmth", "charm"]}, "affinity_scope"),
        ({"affinity_scope": []}, "affinity_scope"),
        ({"affinity_scope": 3}, "affinity_scope"),
        ({"audit": {"user": "u", "cost_center": "x"}}, "audit"),
        ({"audit": {"user": 5}}, "audit.user"),
        ({"audit": {"metadata": "flat"}}, "audit.metadata"),
    ],
)
def test_every_rule_rejects_with_its_field(overrides, field):
    with pytest.raises(TurnRequestError) as raised:
        request(**overrides)
    assert raised.value.field == field
    assert str(raised.value).startswith(f"{field}: ")
    assert isinstance(raised.value, ValueError)


@pytest.mark.parametrize(
    "overrides",
    [
        {"content": "x"},
        {"content": "x" * 4096},
        {"content": " " + "x" * 4096 + " "},  # length counts after strip
        {"client_msg_id": ULID},
        {"client_msg_id": UUID},
        {"client_msg_id": "!" * 26},
        {"tier": "premium"},
        {"tier": ""},
        {"prompt_traits": [trait(f"t{i}") for i in range(8)]},
        {"prompt_traits": [trait("a" * 32, "y" * 2000)]},
        {"prompt_traits": [SimpleNamespace(tag="proto_like", text="attribute access")]},
        {"memory_scope": "none"},
        {"affinity_scope": "full"},
        {"audit": {"user": "u1", "session_id": "s1", "metadata": {"k": "v"}}},
    ],
)
def test_boundaries_accepted(overrides):
    validated = request(**overrides)
    assert validated.content.strip() == validated.content != ""


def test_traits_are_normalized_in_order():
    validated = request(prompt_traits=[trait("b", "  second  "), trait("a", "first")])
    assert validated.prompt_traits == (PromptTrait("b", "second"), PromptTrait("a", "first"))


@pytest.mark.parametrize(
    ("scope", "axes"),
    [
        ("bond", ("warmth", "intimacy", "tension")),
        ("chemistry", ("trust", "intrigue", "patience")),
        ("bond_and_chemistry", ("warmth", "trust", "intimacy", "intrigue", "patience", "tension")),
        ("full", ("warmth", "trust", "intimacy", "intrigue", "patience", "tension")),
        ("none", ()),
        (["trust", "warmth", "trust"], ("trust", "warmth")),
    ],
)
def test_affinity_scope_axes(scope, axes):
    assert request(affinity_scope=scope).affinity_axes == axes


# What each memory_scope lets into the prompt is memory's rule alone (issue 9): tested with the memory
# domain (tests/unit/test_memory_domain.py::test_parse_memory_scope), no longer copied here.


def test_kept_traits_filters_by_allow_list():
    traits = [PromptTrait("formality", "a"), PromptTrait("nsfw_mode", "b"), PromptTrait("language", "c")]
    assert kept_traits(traits, None) == traits
    assert [t.tag for t in kept_traits(traits, frozenset({"formality", "language"}))] == [
        "formality",
        "language",
    ]
    assert kept_traits(traits, frozenset()) == []
