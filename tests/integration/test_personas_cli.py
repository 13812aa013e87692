"""Personas: `rapport seed-personas DIR` upserts by name (idempotent); `rapport import-card FILE` imports
SillyTavern V2/V3 cards (JSON or PNG) keeping unknown extension keys."""
from __future__ import annotations

import base64
import json
import struct
import zlib
from pathlib import Path

from services.cli import main


def _png_with_text(keyword: str, text: str) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"tEXt", keyword.encode() + b"\0" + text.encode())
            + chunk(b"IDAT", zlib.compress(b"\0\0")) + chunk(b"IEND", b""))


async def test_seed_personas_is_idempotent_and_updates_by_name(database_url: str, db, tmp_path: Path,
                                                               monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("DATABASE_URL", database_url)
    folder = tmp_path / "personas"
    folder.mkdir()
    (folder / "mira.toml").write_text('name = "Mira"\nsystem_prompt = "You are Mira, a patient chess coach."\n'
                                      '[art_metadata]\ntimezone = "Europe/Oslo"\nage = 40\n')
    before = await db.fetchval("SELECT count(*) FROM chat.personas")
    assert await _run(["seed-personas", str(folder)]) == 0
    assert await _run(["seed-personas", str(folder)]) == 0
    (folder / "mira.toml").write_text('name = "Mira"\nsystem_prompt = "You are Mira, now a go teacher."\n')
    assert await _run(["seed-personas", str(folder)]) == 0
    assert await db.fetchval("SELECT count(*) FROM chat.personas") == before + 1
    assert await db.fetchval("SELECT system_prompt FROM chat.personas WHERE name = 'Mira'") == \
        "You are Mira, now a go teacher."
    (folder / "bad.toml").write_text('name = "NoPrompt"\n')
    assert await _run(["seed-personas", str(folder)]) == 2


async def test_import_card_json_and_png_keep_unknown_extension_keys(database_url: str, db, tmp_path: Path,
                                                                    monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("DATABASE_URL", database_url)
    card = {"spec": "chara_card_v2", "spec_version": "2.0",
            "data": {"name": "Captain Vale", "description": "A retired sky-ship captain.", "personality": "wry",
                     "scenario": "A harbour tavern.", "first_mes": "Pull up a chair.", "mes_example": "",
                     "tags": ["adventure"], "extensions": {"depth_prompt": {"depth": 4}, "x_custom": [1, 2]}}}
    json_path = tmp_path / "vale.json"
    json_path.write_text(json.dumps(card))
    assert await _run(["import-card", str(json_path)]) == 0
    v3 = {"spec": "chara_card_v3", "spec_version": "3.0",
          "data": {**card["data"], "name": "Nadia Quill", "extensions": {"v3_only": True}}}
    png_path = tmp_path / "nadia.png"
    png_path.write_bytes(_png_with_text("ccv3", base64.b64encode(json.dumps(v3).encode()).decode()))
    assert await _run(["import-card", str(png_path)]) == 0
    rows = {r["name"]: r for r in await db.fetch("SELECT name, source, art_metadata, card FROM chat.personas "
                                                  "WHERE source = 'card'")}
    assert set(rows) == {"Captain Vale", "Nadia Quill"}
    vale_meta = json.loads(rows["Captain Vale"]["art_metadata"])
    assert vale_meta["extensions"] == {"depth_prompt": {"depth": 4}, "x_custom": [1, 2]}
    assert json.loads(rows["Nadia Quill"]["art_metadata"])["extensions"] == {"v3_only": True}
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    assert await _run(["import-card", str(broken)]) == 2


async def _run(argv: list[str]) -> int:
    import asyncio

    return await asyncio.to_thread(main, argv)
