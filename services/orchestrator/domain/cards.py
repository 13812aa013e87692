"""SillyTavern character cards → `PersonaSpec` (orchestrator.md "Personas").

Accepted: V2 (`spec: "chara_card_v2"`), V3 (`"chara_card_v3"`) and flat V1 cards, as JSON bytes or
inside a PNG's `tEXt`/`zTXt`/`iTXt` chunk named `chara` (V2) or `ccv3` (V3, preferred when both
exist), holding base64 JSON. The card's `extensions` are kept verbatim (unknown keys included) and
the whole parsed card is kept in `PersonaSpec.card`.
"""

from __future__ import annotations

import base64
import binascii
import copy
import json
import re
import struct
import zlib
from collections.abc import Iterator, Mapping
from types import MappingProxyType
from typing import Any

from services.orchestrator.domain.personas import PersonaSpec

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CARD_CHUNK_KEYWORDS = ("ccv3", "chara")  # preference order
CARD_SPECS = ("chara_card_v2", "chara_card_v3")
MAX_INFLATED_TEXT_BYTES = 16 * 1024 * 1024  # a compressed text chunk may not inflate beyond this
_CHAR_MACRO = re.compile(r"\{\{char\}\}|<BOT>", re.IGNORECASE)
_USER_MACRO = re.compile(r"\{\{user\}\}|<USER>", re.IGNORECASE)
_ORIGINAL_MACRO = re.compile(r"\{\{original\}\}", re.IGNORECASE)


class CardError(ValueError):
    """The bytes are not a character card this importer understands."""


def parse_character_card(data: bytes) -> PersonaSpec:
    """A card from JSON bytes or a PNG with an embedded card."""
    payload = _card_json_from_png(data) if data.startswith(PNG_SIGNATURE) else data
    try:
        card = json.loads(payload.decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CardError(f"card is not valid UTF-8 JSON: {error}") from None
    return card_to_persona(card)


def card_to_persona(card: Any) -> PersonaSpec:
    """Map a parsed V1/V2/V3 card to a persona; the system prompt is built from its text fields."""
    if not isinstance(card, dict):
        raise CardError("card must be a JSON object")
    spec = card.get("spec")
    if spec is None:
        fields = card  # V1: flat
    elif spec in CARD_SPECS:
        data = card.get("data")
        if not isinstance(data, dict):
            raise CardError(f"{spec} card has no 'data' object")
        fields = data
    else:
        raise CardError(f"unsupported card spec {spec!r} (expected {', '.join(CARD_SPECS)} or a V1 card)")

    name = _field(fields, "name")
    if not name:
        raise CardError("card has no name")
    extensions = fields.get("extensions", {})
    if not isinstance(extensions, dict):
        raise CardError("card 'extensions' must be an object")
    tags = fields.get("tags", [])
    if not isinstance(tags, list):
        raise CardError("card 'tags' must be a list of strings")

    system_prompt = _system_prompt(fields, name)
    if not system_prompt:
        raise CardError("card has no description, personality, scenario or system_prompt")
    return PersonaSpec(
        name=name,
        system_prompt=system_prompt,
        topics=tuple(tag.strip() for tag in tags if isinstance(tag, str) and tag.strip()),
        first_mes=_field(fields, "first_mes") or None,
        mes_example=_field(fields, "mes_example") or None,
        creator_notes=_field(fields, "creator_notes") or None,
        extensions=MappingProxyType(copy.deepcopy(extensions)),
        card=MappingProxyType(copy.deepcopy(card)),
    )


def _field(fields: Mapping[str, Any], key: str) -> str:
    value = fields.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise CardError(f"card field {key!r} must be a string")
    return value.strip()


def _system_prompt(fields: Mapping[str, Any], name: str) -> str:
    """Card system_prompt, description, "Personality:", "Scenario:" — macros resolved for the prompt."""
    parts = [
        _ORIGINAL_MACRO.sub("", _field(fields, "system_prompt")).strip(),
        _field(fields, "description"),
        f"Personality: {personality}" if (personality := _field(fields, "personality")) else "",
        f"Scenario: {scenario}" if (scenario := _field(fields, "scenario")) else "",
    ]
    text = "\n\n".join(part for part in parts if part)
    return _USER_MACRO.sub("the user", _CHAR_MACRO.sub(name, text))


# ---------------------------------------------------------------------------------------------
# PNG text chunks


def _png_chunks(data: bytes) -> Iterator[tuple[bytes, bytes]]:
    """(type, data) per chunk, CRC-checked, up to IEND."""
    offset = len(PNG_SIGNATURE)
    while offset + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[offset : offset + 8])
        end = offset + 8 + length
        if end + 4 > len(data):
            raise CardError("PNG is truncated")
        body = data[offset + 8 : end]
        (crc,) = struct.unpack(">I", data[end : end + 4])
        if zlib.crc32(kind + body) != crc:
            raise CardError(f"PNG chunk {kind.decode('latin-1')!r} has a bad CRC")
        yield kind, body
        if kind == b"IEND":
            return
        offset = end + 4
    raise CardError("PNG has no IEND chunk")


def _inflate(data: bytes) -> bytes:
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(data, MAX_INFLATED_TEXT_BYTES)
    except zlib.error as error:
        raise CardError(f"PNG text chunk does not decompress: {error}") from None
    if inflater.unconsumed_tail:
        raise CardError("PNG text chunk inflates beyond the size limit")
    return out


def _text_chunk(kind: bytes, body: bytes) -> tuple[str, bytes] | None:
    """(keyword, text bytes) of a tEXt / zTXt / iTXt chunk; None for other chunks."""
    if kind not in (b"tEXt", b"zTXt", b"iTXt") or b"\0" not in body:
        return None
    keyword, rest = body.split(b"\0", 1)
    if kind == b"tEXt":
        return keyword.decode("latin-1"), rest
    if kind == b"zTXt":
        return keyword.decode("latin-1"), _inflate(rest[1:])
    if len(rest) < 2:
        raise CardError("PNG iTXt chunk is truncated")
    compressed, text = rest[0], rest[2:]
    try:
        _language, _translated, text = text.split(b"\0", 2)
    except ValueError:
        raise CardError("PNG iTXt chunk is malformed") from None
    return keyword.decode("latin-1"), _inflate(text) if compressed else text


def _card_json_from_png(data: bytes) -> bytes:
    """The base64-decoded card JSON from the PNG's `ccv3` (preferred) or `chara` chunk."""
    found: dict[str, bytes] = {}
    for kind, body in _png_chunks(data):
        chunk = _text_chunk(kind, body)
        if chunk and chunk[0] in CARD_CHUNK_KEYWORDS:
            found.setdefault(chunk[0], chunk[1])
    keyword = next((key for key in CARD_CHUNK_KEYWORDS if key in found), None)
    if keyword is None:
        raise CardError("PNG has no character card (no 'chara' or 'ccv3' text chunk)")
    try:
        return base64.b64decode(found[keyword].strip(), validate=True)
    except (binascii.Error, ValueError):
        raise CardError(f"PNG '{keyword}' chunk is not valid base64") from None
