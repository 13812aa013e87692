"""SillyTavern character cards (V1/V2/V3, JSON and PNG) → PersonaSpec (orchestrator.md "Personas")."""

import base64
import json
import struct
import zlib

import pytest

from services.orchestrator.domain.cards import CardError, parse_character_card

EXTENSIONS = {
    "talkativeness": "0.5",
    "depth_prompt": {"prompt": "Stay curious.", "depth": 4},
    "x_vendor_unknown": {"nested": [1, {"deep": True}], "emoji": "🌊"},
}


def card_v2(**data_overrides):
    data = {
        "name": "Rin",
        "description": "{{char}} is a ferry pilot who knows every island in the bay.",
        "personality": "calm, wry, protective",
        "scenario": "{{user}} boards the last ferry of the night.",
        "first_mes": "Evening, {{user}}. Last crossing — hold on to something.",
        "mes_example": "<START>\n{{user}}: Rough sea?\n{{char}}: Rough enough.",
        "creator_notes": "Best with a patient user.",
        "system_prompt": "{{original}} Write in short lines.",
        "post_history_instructions": "",
        "alternate_greetings": [],
        "tags": ["sea", "  night  ", ""],
        "creator": "someone",
        "character_version": "1.2",
        "extensions": EXTENSIONS,
        **data_overrides,
    }
    return {"spec": "chara_card_v2", "spec_version": "2.0", "data": data}


def card_v3():
    card = card_v2(
        nickname="Captain", group_only_greetings=[], assets=[{"type": "icon", "uri": "ccdefault:"}]
    )
    return {**card, "spec": "chara_card_v3", "spec_version": "3.0"}


def chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png(*text_chunks: bytes) -> bytes:
    """A valid 1×1 greyscale PNG carrying the given extra chunks before IDAT."""
    header = chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0))
    pixels = chunk(b"IDAT", zlib.compress(b"\x00\x00"))
    return b"\x89PNG\r\n\x1a\n" + header + b"".join(text_chunks) + pixels + chunk(b"IEND", b"")


def b64(card) -> bytes:
    return base64.b64encode(json.dumps(card).encode("utf-8"))


def text_chunk(keyword: str, card) -> bytes:
    return chunk(b"tEXt", keyword.encode("latin-1") + b"\0" + b64(card))


def itxt_chunk(keyword: str, card, compressed: bool) -> bytes:
    text = zlib.compress(b64(card)) if compressed else b64(card)
    return chunk(b"iTXt", keyword.encode() + b"\0" + bytes([int(compressed), 0]) + b"en\0\0" + text)


def assert_rin(spec, card):
    assert spec.name == "Rin"
    assert spec.system_prompt == (
        "Write in short lines.\n\n"
        "Rin is a ferry pilot who knows every island in the bay.\n\n"
        "Personality: calm, wry, protective\n\n"
        "Scenario: the user boards the last ferry of the night."
    )
    assert spec.first_mes == "Evening, {{user}}. Last crossing — hold on to something."  # kept verbatim
    assert spec.mes_example.startswith("<START>\n{{user}}: Rough sea?")
    assert spec.creator_notes == "Best with a patient user."
    assert spec.topics == ("sea", "night")
    assert dict(spec.extensions) == EXTENSIONS  # unknown keys preserved verbatim
    assert dict(spec.card) == card
    assert spec.art_metadata()["extensions"] == EXTENSIONS


def test_v2_json():
    card = card_v2()
    assert_rin(parse_character_card(json.dumps(card).encode()), card)


def test_v3_json_with_bom():
    card = card_v3()
    spec = parse_character_card(b"\xef\xbb\xbf" + json.dumps(card, ensure_ascii=False).encode())
    assert_rin(spec, card)
    assert spec.card["data"]["nickname"] == "Captain"


def test_v1_flat_card():
    spec = parse_character_card(
        json.dumps({"name": "Old", "description": "An old-style card.", "first_mes": "Hi"}).encode()
    )
    assert (spec.name, spec.system_prompt, spec.first_mes, dict(spec.extensions)) == (
        "Old",
        "An old-style card.",
        "Hi",
        {},
    )


def test_png_v2_text_chunk_round_trip():
    card = card_v2()
    assert_rin(parse_character_card(png(text_chunk("chara", card))), card)


@pytest.mark.parametrize("compressed", [False, True])
def test_png_v3_itxt_chunk_preferred_over_v2(compressed):
    v3 = card_v3()
    stale_v2 = card_v2(name="Stale")
    spec = parse_character_card(png(text_chunk("chara", stale_v2), itxt_chunk("ccv3", v3, compressed)))
    assert spec.card["spec"] == "chara_card_v3"
    assert_rin(spec, v3)


def test_png_ztxt_chunk():
    card = card_v2()
    body = b"chara\0\0" + zlib.compress(b64(card))
    assert_rin(parse_character_card(png(chunk(b"zTXt", body))), card)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"not json", "not valid UTF-8 JSON"),
        (b"\xff\xfe", "not valid UTF-8 JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (json.dumps({"spec": "chara_card_v9", "data": {}}).encode(), "unsupported card spec 'chara_card_v9'"),
        (json.dumps({"spec": "chara_card_v2"}).encode(), "has no 'data' object"),
        (json.dumps(card_v2(name="")).encode(), "card has no name"),
        (json.dumps(card_v2(name=5)).encode(), "card field 'name' must be a string"),
        (json.dumps(card_v2(extensions=[])).encode(), "'extensions' must be an object"),
        (json.dumps(card_v2(tags="sea")).encode(), "'tags' must be a list"),
        (
            json.dumps(
                card_v2(description="", personality="", scenario="", system_prompt="{{original}}")
            ).encode(),
            "card has no description",
        ),
        (png(), "PNG has no character card"),
        (png(chunk(b"tEXt", b"chara\0%%%not-base64%%%")), "'chara' chunk is not valid base64"),
        (png(text_chunk("chara", card_v2()))[:-20], "PNG is truncated"),
        (png(text_chunk("chara", card_v2())).replace(b"IEND", b"IENX"), "bad CRC"),
        (png(chunk(b"zTXt", b"chara\0\0garbage")), "does not decompress"),
    ],
)
def test_bad_input_raises_card_error(data, message):
    with pytest.raises(CardError, match=message):
        parse_character_card(data)


def test_png_without_iend():
    data = png(text_chunk("chara", card_v2()))
    with pytest.raises(CardError, match="no IEND"):
        parse_character_card(data[: -len(chunk(b"IEND", b""))])


def test_decompression_bomb_is_refused():
    bomb = zlib.compress(b"A" * (17 * 1024 * 1024))
    with pytest.raises(CardError, match="size limit"):
        parse_character_card(png(chunk(b"zTXt", b"chara\0\0" + bomb)))
