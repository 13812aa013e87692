"""The committed OpenAPI document matches the gateway, and every route states the error contract."""
from __future__ import annotations

import json

from gateway.app import OPENAPI_PATH
from gateway.openapi import render_openapi


def test_committed_openapi_document_matches_the_gateway() -> None:
    assert OPENAPI_PATH.exists(), "run `make openapi`"
    assert OPENAPI_PATH.read_text() == render_openapi(), "the API changed: run `make openapi` and commit"


def test_every_comp_route_is_documented() -> None:
    document = json.loads(render_openapi())
    paths = set(document["paths"])
    for path in ("/comp/personas", "/comp/chat/start", "/comp/chat/{session_id}/message/stream",
                 "/comp/chat/{session_id}/history", "/comp/chat/{user_id}/sessions", "/comp/user/{user_id}/profile",
                 "/comp/chat/{session_id}/event/gift", "/comp/chat/{session_id}/gifts", "/comp/affinity/{session_id}",
                 "/comp/user/{user_id}/memories", "/comp/user/{user_id}/memories/{memory_id}",
                 "/comp/user/{user_id}/export", "/comp/user/{user_id}/data", "/healthz", "/readyz",
                 "/comp/chat/{session_id}/messages/{message_id}/explain"):
        assert path in paths, path
