"""Persona TOML parsing and the shipped example personas (orchestrator.md "Personas")."""

from pathlib import Path

import pytest

from services.orchestrator.domain.personas import PersonaError, PersonaSpec, parse_persona_toml

PERSONA_DIR = Path(__file__).resolve().parents[2] / "services" / "orchestrator" / "personas"

GOOD = """
name = "Mira"
system_prompt = "You are Mira, a lighthouse keeper."
tip_personality = "zen"

[art_metadata]
gender = "woman"
timezone = "Europe/Oslo"
age = 33
mbti = "infj-t"
backstory = "Grew up on the coast."
speech_style = "Quiet, concrete."
quirks = ["Counts the seconds between flashes."]
topics = ["storms", "ships"]
appearance = "Oilskin coat."
"""


def test_parse_full_persona():
    spec = parse_persona_toml(GOOD, "mira.toml")
    assert spec == PersonaSpec(
        name="Mira",
        system_prompt="You are Mira, a lighthouse keeper.",
        tip_personality="zen",
        gender="woman",
        timezone="Europe/Oslo",
        age=33,
        mbti="INFJ-T",
        backstory="Grew up on the coast.",
        speech_style="Quiet, concrete.",
        quirks=("Counts the seconds between flashes.",),
        topics=("storms", "ships"),
        appearance="Oilskin coat.",
    )
    assert spec.art_metadata() == {
        "gender": "woman",
        "timezone": "Europe/Oslo",
        "age": 33,
        "mbti": "INFJ-T",
        "backstory": "Grew up on the coast.",
        "speech_style": "Quiet, concrete.",
        "quirks": ["Counts the seconds between flashes."],
        "topics": ["storms", "ships"],
        "appearance": "Oilskin coat.",
    }


def test_minimal_persona():
    spec = parse_persona_toml('name = "A"\nsystem_prompt = "You are A."', "a.toml")
    assert (spec.name, spec.timezone, spec.quirks, spec.art_metadata()) == ("A", None, (), {})


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('system_prompt = "x"', "name"),
        ('name = "A"', "system_prompt"),
        ('name = ""\nsystem_prompt = "x"', "name"),
        ('name = "A"\nsystem_prompt = 3', "system_prompt"),
        ('name = "A"\nsystem_prompt = "x"\nmood = "sad"', "mood"),
        ('name = "A"\nsystem_prompt = "x"\nart_metadata = 1', "art_metadata"),
        (
            'name = "A"\nsystem_prompt = "x"\n[art_metadata]\ntimezone = "Mars/Olympus"',
            "art_metadata.timezone",
        ),
        ('name = "A"\nsystem_prompt = "x"\n[art_metadata]\nage = 16', "art_metadata.age"),
        ('name = "A"\nsystem_prompt = "x"\n[art_metadata]\nage = "30"', "art_metadata.age"),
        ('name = "A"\nsystem_prompt = "x"\n[art_metadata]\nmbti = "XYZW"', "art_metadata.mbti"),
        ('name = "A"\nsystem_prompt = "x"\n[art_metadata]\nquirks = "one"', "art_metadata.quirks"),
        ('name = "A"\nsystem_prompt = "x"\n[art_metadata]\ntopics = ["ok", 2]', "art_metadata.topics[1]"),
        ('name = "A"\nsystem_prompt = "x"\n[art_metadata]\nspeech-style = "x"', "art_metadata.speech-style"),
        ('name = "A"\nsystem_prompt = "x"\ntip_personality = ""', "tip_personality"),
        ('name = "A\nsystem_prompt = "x"', "toml"),
    ],
)
def test_errors_name_file_and_key(text, key):
    with pytest.raises(PersonaError) as raised:
        parse_persona_toml(text, "personas/bad.toml")
    assert (raised.value.source, raised.value.key) == ("personas/bad.toml", key)
    assert str(raised.value).startswith(f"personas/bad.toml: {key}: ")


def test_three_example_personas_are_valid_and_distinct():
    files = sorted(PERSONA_DIR.glob("*.toml"))
    assert len(files) == 3
    specs = [parse_persona_toml(path.read_text(encoding="utf-8"), path.name) for path in files]
    assert len({spec.name for spec in specs}) == 3
    assert {spec.timezone for spec in specs} == {"Europe/Lisbon", "Australia/Sydney", "America/Santiago"}
    for spec in specs:
        assert spec.speech_style and spec.backstory and len(spec.quirks) >= 3 and len(spec.topics) >= 3
        assert spec.age is not None and spec.age >= 18 and spec.mbti
        assert "\\" not in spec.system_prompt  # line continuations folded
