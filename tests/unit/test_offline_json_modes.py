"""The offline responder's JSON modes: `response_format` json_object → `{}`, json_schema → the simplest instance
of the schema, which the schema accepts."""
from __future__ import annotations

import json

import jsonschema

from services.offline_llm.responder import compose_json_reply

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 3},
        "age": {"type": "integer", "exclusiveMinimum": 17},
        "tags": {"type": "array", "items": {"type": "string"}, "minItems": 2},
        "mood": {"enum": ["calm", "curious"]},
        "when": {"type": "string", "format": "date"},
        "place": {"$ref": "#/$defs/place"},
        "note": {"anyOf": [{"type": "null"}, {"type": "string"}]},
        "optional": {"type": "number"},
    },
    "required": ["name", "age", "tags", "mood", "when", "place", "note"],
    "additionalProperties": False,
    "$defs": {"place": {"type": "object", "properties": {"lat": {"type": ["number", "null"], "maximum": -10}},
                        "required": ["lat"]}},
}


def test_json_schema_answers_are_instances_of_the_schema() -> None:
    answer = json.loads(compose_json_reply([], {"type": "json_schema", "json_schema": {"name": "x", "schema": SCHEMA}}))
    jsonschema.validate(answer, SCHEMA)
    assert answer["age"] == 18 and answer["mood"] == "calm" and len(answer["tags"]) == 2 and "optional" not in answer


def test_json_object_answers_an_object() -> None:
    assert json.loads(compose_json_reply([], {"type": "json_object"})) == {}
