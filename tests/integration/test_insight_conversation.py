"""End to end through the gateway: a conversation in which the user says where they live, what they
do and what they enjoy becomes a profile with provenance pointing at those messages; only that user
can read it (spec: insight.md; gateway GET /comp/user/{user_id}/profile)."""
from __future__ import annotations

import uuid
from datetime import datetime

from tests.stack import Stack, wait_for

TURNS = (
    "Hi! I live in Lisbon, right by the river.",
    "I work as a nurse at the children's hospital.",
    "What do you do for fun? I love hiking and jazz.",
)


async def test_conversation_builds_a_profile_with_provenance_only_its_owner_can_read(stack: Stack, db) -> None:
    user = uuid.uuid4()
    chat = await stack.start_chat(user)
    for text in TURNS:
        await stack.send(user, chat["session_id"], text)

    async def insight_jobs_done() -> bool:
        statuses = await db.fetch("SELECT status FROM chat.outbox WHERE target = 'insight'")
        return len(statuses) == len(TURNS) and all(row["status"] == "done" for row in statuses)

    await wait_for(insight_jobs_done)
    history = (await stack.client.get(f"/comp/chat/{chat['session_id']}/history",
                                      headers=stack.headers(user))).json()
    said = {m["content"]: m["id"] for m in history["messages"] if m["role"] == "user"}
    lives, works, enjoys = (said[text] for text in TURNS)

    response = await stack.client.get(f"/comp/user/{user}/profile", headers=stack.headers(user))
    assert response.status_code == 200
    body = response.json()
    assert body["insights"] == {"city": "Lisbon", "occupation": "nurse", "interests": ["hiking", "jazz"]}
    assert {field: entry["sources"] for field, entry in body["provenance"].items()} == {
        "city": [lives], "occupation": [works], "interests": [enjoys]}
    assert all(0 < entry["confidence"] <= 1 and datetime.fromisoformat(entry["updated_at"])
               for entry in body["provenance"].values())
    assert body["training_level"] == 0.2
    assert datetime.fromisoformat(body["updated_at"].removesuffix("Z"))

    stranger = uuid.uuid4()
    forbidden = await stack.client.get(f"/comp/user/{user}/profile", headers=stack.headers(stranger))
    assert forbidden.status_code == 403 and forbidden.json()["code"] == "forbidden"
    own = await stack.client.get(f"/comp/user/{stranger}/profile", headers=stack.headers(stranger))
    assert own.status_code == 200
    assert own.json() == {"insights": {}, "provenance": {}, "training_level": 0.0, "updated_at": None}
