"""The web page at `/`, end to end in headless Chromium against the real stack: token from the URL fragment,
a persona, a streamed reply, the live relationship meters, memories (with delete) and the profile."""
from __future__ import annotations

import os
import re
import uuid
from collections.abc import AsyncIterator

import pytest

from tests.stack import Stack, start_stack, wait_for

from .conftest import BrowserPage

pytestmark = pytest.mark.e2e

AXIS_RANGES = {"warmth": (-1.0, 1.0), "trust": (0.0, 1.0), "intimacy": (0.0, 1.0), "intrigue": (0.0, 1.0),
               "patience": (0.0, 1.0), "tension": (0.0, 1.0), "bond": (0.0, 1.0), "chemistry": (0.0, 1.0)}
LABELS = {"romantic", "friend", "frenemy", "slow_burn", "stranger"}
MESSAGE = "Hello there! I live in Lisbon and I love long walks by the river."
POST_PROCESS_TIMEOUT_MS = 15_000


@pytest.fixture
async def debug_stack(database_url: str) -> AsyncIterator[Stack]:
    """The real stack with the relationship view exposed, as `rapport up` runs it."""
    running = await start_stack(database_url, extra_env={"EXPOSE_AFFINITY_DEBUG": "true"})
    try:
        yield running
    finally:
        await running.stop()


async def test_web_page_chats_and_shows_relationship_memories_and_profile(
        debug_stack: Stack, browser_page: BrowserPage) -> None:
    from playwright.async_api import expect

    stack, page = debug_stack, browser_page.page
    user = uuid.uuid4()
    token = stack.token(user)
    persona = (await stack.personas(user))[0]

    # Without a token the page asks for one; `/#token=…` is read, remembered and cleared from the URL.
    await page.goto(f"{stack.url}/")
    await expect(page.get_by_role("textbox", name="Access token")).to_be_visible()
    await page.goto(f"{stack.url}/#token={token}")
    await expect(page.locator("#who-id")).to_have_text(str(user))
    await expect(page).to_have_url(f"{stack.url}/")
    assert await page.evaluate("localStorage.getItem('rapport.token')") == token

    # Pick a persona, start a chat, send a message; the streamed reply ends in the done state.
    await page.get_by_label("Persona").select_option(label=persona["name"])
    await page.get_by_role("button", name="Start chat").click()
    await expect(page.locator("#chat-persona")).to_have_text(f"with {persona['name']}")
    await page.get_by_label("Your message").fill(MESSAGE)
    await page.get_by_role("button", name="Send").click()
    reply = page.locator("#chat-log .turn.assistant").last
    await expect(reply).to_have_attribute("data-state", "done", timeout=15_000)
    await expect(reply.locator(".turn-meta")).to_contain_text("offline responder")
    session_id = await page.evaluate("localStorage.getItem('rapport.session')")
    history = (await stack.client.get(f"/comp/chat/{session_id}/history", headers=stack.headers(user))).json()
    assert history["messages"][0]["content"] == MESSAGE
    await expect(reply.locator(".text")).to_have_text(history["messages"][-1]["content"])  # the deltas, assembled

    # The turn moved the vector (a point was appended); the meters show the service's numbers, in range.
    await expect(page.locator("#affinity-chart")).to_have_attribute("data-points", re.compile(r"^([2-9]|\d\d+)$"),
                                                                    timeout=POST_PROCESS_TIMEOUT_MS)
    state = (await stack.client.get(f"/comp/affinity/{session_id}", headers=stack.headers(user))).json()
    for axis, (low, high) in AXIS_RANGES.items():
        meter = page.get_by_role("meter", name=axis, exact=True)
        await expect(meter).to_have_attribute("aria-valuetext", f"{state[axis]:.2f}")
        value = float(await meter.get_attribute("aria-valuenow") or "nan")
        assert low <= value <= high, (axis, value)
        await expect(page.locator(f"#meter-{axis}-value")).to_have_text(f"{state[axis]:.2f}")
    assert state["label"] in LABELS
    await expect(page.locator("#relationship-label")).to_have_text(state["label"])
    await expect(page.locator("#relationship-mode")).to_have_text("Live.")

    # Post-process is asynchronous: the page refreshes until the memory and the profile field show up.
    memory = page.locator("#memory-list li", has=page.locator(".content", has_text=MESSAGE))
    await expect(memory).to_have_count(1, timeout=POST_PROCESS_TIMEOUT_MS)
    await expect(page.locator('#profile-fields dd[data-field="city"]')).to_have_text(
        "Lisbon", timeout=POST_PROCESS_TIMEOUT_MS)
    training = float(await page.get_by_role("meter", name="Training level").get_attribute("aria-valuenow") or "0")
    assert 0 < training <= 1
    if path := os.environ.get("RAPPORT_WEB_SCREENSHOT"):  # for a human look at the layout; never committed
        await page.screenshot(path=path, full_page=True)

    # Deleting a memory removes it from the page and from the service.
    await memory.get_by_role("button", name=re.compile("^Delete memory")).click()
    await expect(memory).to_have_count(0)
    listed = (await stack.client.get(f"/comp/user/{user}/memories", headers=stack.headers(user))).json()
    assert MESSAGE not in [m["content"] for m in listed["memories"]]

    # A reload resumes the session from the stored token and its history.
    await page.reload()
    await expect(page.locator("#chat-log .turn.user .text")).to_have_text([MESSAGE])
    await expect(page.locator("#chat-log .turn.assistant .text")).to_have_text([history["messages"][-1]["content"]])
    assert browser_page.errors == []


# -- the conversation as an event log (issue 10): swipe, edit and branch, the branch switcher, delete ---------

TURNS = ["Hi! I'm Sam and I live in Lisbon.", "I adopted a dog named Rex last week.", "What do you like to do?"]
EDITED = "I adopted a cat named Luna last week."
AXES = ("warmth", "trust", "intimacy", "intrigue", "patience", "tension", "bond", "chemistry")


async def outbox_settled(db) -> None:  # type: ignore[no-untyped-def]
    """Every outbox job delivered: post-process, and the state that follows the active branch."""
    async def done() -> bool:
        rows = await db.fetch("SELECT status FROM chat.outbox")
        assert "dead" not in [r["status"] for r in rows]
        return bool(rows) and all(r["status"] == "done" for r in rows)

    await wait_for(done, timeout=30)


async def screenshot(page, name: str) -> None:  # type: ignore[no-untyped-def]
    """For a human look at the layout (RAPPORT_WEB_SCREENSHOT=path.png → path-<name>.png); never committed."""
    if path := os.environ.get("RAPPORT_WEB_SCREENSHOT"):
        await page.screenshot(path=re.sub(r"(\.png)?$", f"-{name}.png", path, count=1), full_page=True)


async def test_web_page_swipes_edits_on_a_branch_switches_back_and_deletes_with_a_preview(
        debug_stack: Stack, browser_page: BrowserPage, db) -> None:  # type: ignore[no-untyped-def]
    from playwright.async_api import expect

    stack, page = debug_stack, browser_page.page
    user = uuid.uuid4()
    headers = stack.headers(user)
    await page.goto(f"{stack.url}/#token={stack.token(user)}")
    await page.get_by_role("button", name="Start chat").click()
    await expect(page.get_by_label("Your message")).to_be_enabled()
    log = page.locator("#chat-log")
    users, replies = log.locator(".turn.user"), log.locator(".turn.assistant")

    # A few turns; once the history is placed, every message has its id and its actions.
    for n, text in enumerate(TURNS, start=1):
        await page.get_by_label("Your message").fill(text)
        await page.get_by_label("Your message").press("Enter")
        await expect(replies).to_have_count(n, timeout=15_000)  # 5 s was too short once in a loaded CI run
        await expect(replies.last.get_by_role("button", name=re.compile("^Regenerate reply"))).to_be_visible(
            timeout=15_000)
        await outbox_settled(db)
    session_id = await page.evaluate("localStorage.getItem('rapport.session')")
    first = (await stack.client.get(f"/comp/chat/{session_id}/history", headers=headers)).json()
    old_ids = [m["id"] for m in first["messages"]]
    assert [m["content"] for m in first["messages"] if m["role"] == "user"] == TURNS
    await expect(log.locator(".turn")).to_have_count(6)
    assert await log.locator(".turn").evaluate_all("items => items.map(i => i.dataset.messageId)") == old_ids
    await expect(page.locator("#branches-box")).to_be_hidden()  # one branch: nothing to switch
    rex = page.locator("#memory-list li", has=page.locator(".content", has_text="Rex"))
    await expect(rex.first).to_be_visible(timeout=POST_PROCESS_TIMEOUT_MS)
    state_after_three = (await stack.client.get(f"/comp/affinity/{session_id}", headers=headers)).json()

    # Swipe: regenerate the last reply → 2/2 with the new text; ‹ goes back to 1/2 and the first text.
    last = replies.last
    original = first["messages"][-1]["content"]
    await expect(last.locator(".text")).to_have_text(original)
    await last.get_by_role("button", name=re.compile("^Regenerate reply")).click()
    await expect(last.locator(".swipe-position")).to_have_text("2/2", timeout=15_000)
    swiped = (await stack.client.get(f"/comp/chat/{session_id}/history", headers=headers)).json()["messages"][-1]
    assert swiped["alternatives"][0] == old_ids[-1] and swiped["alternative_index"] == 1
    assert swiped["content"] != original, "the offline responder gave the same reply twice"
    await expect(last.locator(".text")).to_have_text(swiped["content"])
    await expect(last.get_by_role("group")).to_have_attribute("aria-label", re.compile("^Reply 2 of 2"))
    await expect(last.get_by_role("button", name="Next reply")).to_be_disabled()
    await last.get_by_role("button", name="Previous reply").click()
    await expect(last.locator(".swipe-position")).to_have_text("1/2")
    await expect(last.locator(".text")).to_have_text(original)
    await expect(last.get_by_role("button", name="Next reply")).to_be_focused()  # ‹ is disabled at 1/2
    await page.keyboard.press("ArrowRight")  # the arrow keys swipe too
    await expect(last.locator(".text")).to_have_text(swiped["content"])
    await expect(last.get_by_role("button", name="Previous reply")).to_be_focused()  # › is disabled at 2/2
    await page.keyboard.press("ArrowLeft")
    await expect(last.locator(".swipe-position")).to_have_text("1/2")
    await expect(last.locator(".text")).to_have_text(original)
    shown = (await stack.client.get(f"/comp/chat/{session_id}/history", headers=headers)).json()
    assert [m["id"] for m in shown["messages"]] == old_ids and shown["messages"][-1]["alternative_index"] == 0
    await outbox_settled(db)

    # Edit and branch the second message: the history continues from the first reply with the edited text.
    second = users.nth(1)
    await second.get_by_role("button", name=re.compile("^Edit message")).click()
    editor = second.get_by_role("textbox", name="Edited message")
    await expect(editor).to_have_value(TURNS[1])
    await expect(editor).to_be_focused()
    await editor.fill(EDITED)
    await second.get_by_role("button", name="Send on a new branch").click()
    await expect(users.locator(".text")).to_have_text([TURNS[0], EDITED])
    await expect(replies).to_have_count(2)
    await expect(replies.last.get_by_role("button", name=re.compile("^Regenerate reply"))).to_be_visible(
        timeout=15_000)
    branched = (await stack.client.get(f"/comp/chat/{session_id}/history", headers=headers)).json()
    assert [m["id"] for m in branched["messages"][:2]] == old_ids[:2] and branched["branch_id"] != first["branch_id"]
    assert branched["messages"][2]["content"] == EDITED and branched["messages"][2]["parent_id"] == old_ids[1]
    await expect(replies.last.locator(".text")).to_have_text(branched["messages"][3]["content"])

    # The branch switcher lists both, the new one shown; the Rex memories are off the active branch now.
    await expect(page.locator("#branches-box")).to_be_visible()
    await expect(page.locator("#branch-count")).to_have_text("2")
    await page.locator("#branches-box summary").click()
    branches = page.locator("#branch-list button")
    await expect(branches).to_have_count(2)
    await expect(branches.nth(1)).to_have_attribute("aria-current", "true")
    await expect(branches.nth(1)).to_contain_text("Branch 2 (shown) · 4 messages")
    await expect(branches.nth(0)).to_contain_text("Branch 1 · 6 messages")
    await expect(rex.first).to_have_class(re.compile(r"\boff-branch\b"), timeout=POST_PROCESS_TIMEOUT_MS)
    await expect(rex.first.locator(".badge.off-branch")).to_have_text("off the active branch")
    await screenshot(page, "branches")
    await outbox_settled(db)

    # Switching back restores the old messages (the chosen reply 1/2 included), the vector and the memories.
    await branches.nth(0).click()
    await expect(users.locator(".text")).to_have_text(TURNS)
    await expect(branches.nth(0)).to_have_attribute("aria-current", "true")
    await expect(branches.nth(0)).to_be_focused()
    assert await log.locator(".turn").evaluate_all("items => items.map(i => i.dataset.messageId)") == old_ids
    await expect(replies.last.locator(".text")).to_have_text(original)
    await expect(replies.last.locator(".swipe-position")).to_have_text("1/2")
    await outbox_settled(db)
    async def meters_show_the_state_after_three_turns() -> bool:
        shown = await page.evaluate("""axes => Object.fromEntries(axes.map(axis => [axis,
            Number(document.querySelector(`.bar[data-axis="${axis}"]`).getAttribute("aria-valuenow"))]))""", AXES)
        return all(abs(shown[axis] - state_after_three[axis]) < 1e-6 for axis in AXES)

    await wait_for(meters_show_the_state_after_three_turns, timeout=POST_PROCESS_TIMEOUT_MS / 1000)
    await expect(page.locator("#affinity-chart .branch-mark")).not_to_have_count(0)
    await expect(page.locator("#memory-list li.off-branch", has=page.locator(".content", has_text="Rex"))
                 ).to_have_count(0, timeout=POST_PROCESS_TIMEOUT_MS)

    # Delete the Rex message: the preview names what leaves, the memories and the vector before/after;
    # Escape cancels (nothing changes), confirming removes it.
    rex_message = users.nth(1)
    dialog = page.get_by_role("dialog", name="Delete this message?")
    await rex_message.get_by_role("button", name=re.compile("^Delete message")).click()
    await expect(dialog).to_be_visible()
    impact = (await stack.client.delete(f"/comp/chat/{session_id}/messages/{old_ids[2]}",
                                        params={"dry_run": "true"}, headers=headers)).json()
    assert impact["leaving_active_branch"] == old_ids[2:4] and impact["memories"]
    await expect(dialog.locator("#delete-messages li")).to_have_count(2)
    await expect(dialog.locator("#delete-messages li").nth(0)).to_have_text(f"You: {TURNS[1]}")
    await expect(dialog.locator("#delete-messages li").nth(1)).to_contain_text(first["messages"][3]["content"])
    await expect(dialog.locator("#delete-memories li")).to_have_count(len(impact["memories"]))
    for memory in impact["memories"]:
        await expect(dialog.locator("#delete-memories")).to_contain_text(memory["content"])
    for axis in AXES:  # three decimals: a delete often moves an axis by less than 0.01
        row = dialog.locator(f'#delete-vector-rows tr[data-axis="{axis}"]')
        cells = await row.locator("td").all_text_contents()
        before, after = (float(cell.split()[0]) for cell in cells)
        assert abs(before - impact["affinity_before"][axis]) <= 5e-4 and abs(
            after - impact["affinity_after"][axis]) <= 5e-4, (axis, cells)
        assert (await row.get_attribute("class") == "changed") == (before != after), (axis, cells)
    if any(abs(impact["affinity_before"][a] - impact["affinity_after"][a]) >= 1e-3 for a in AXES):
        await expect(dialog.locator("#delete-vector-rows tr.changed")).not_to_have_count(0)
    await expect(dialog.get_by_role("button", name="Cancel")).to_be_focused()
    await screenshot(page, "delete-preview")
    await page.keyboard.press("Escape")
    await expect(dialog).to_be_hidden()
    await expect(users.locator(".text")).to_have_text(TURNS)
    await rex_message.get_by_role("button", name=re.compile("^Delete message")).click()
    await dialog.get_by_role("button", name="Delete for good").click()
    await expect(dialog).to_be_hidden()
    await expect(users.locator(".text")).to_have_text([TURNS[0], TURNS[2]])
    await expect(replies).to_have_count(2)
    await expect(page.locator("#turn-status")).to_have_text("Deleted 2 messages.")
    after = (await stack.client.get(f"/comp/chat/{session_id}/history", headers=headers)).json()
    assert [m["id"] for m in after["messages"]] == old_ids[:2] + old_ids[4:]
    gone = [m["content"] for m in impact["memories"]]
    await expect(page.locator("#memory-list li .content").filter(has_text=re.compile("Rex"))).to_have_count(
        0, timeout=POST_PROCESS_TIMEOUT_MS)
    listed = (await stack.client.get(f"/comp/user/{user}/memories", headers=headers)).json()["memories"]
    assert not set(gone) & {m["content"] for m in listed}
    assert browser_page.errors == []


async def test_web_page_shows_a_ghost_in_the_terminal_clients_words_and_swipes_to_and_from_it(
        debug_stack: Stack, browser_page: BrowserPage, db) -> None:  # type: ignore[no-untyped-def]
    from playwright.async_api import expect

    stack, page = debug_stack, browser_page.page
    user = uuid.uuid4()
    session_id = (await stack.start_chat(user))["session_id"]
    for i in range(10):  # enough of a conversation for a ghost, then a mood soured by four cold gifts
        await stack.send(user, session_id, f"Tell me something about your day, part {i + 1} of it.")
    await outbox_settled(db)
    for _ in range(4):
        response = await stack.client.post(f"/comp/chat/{session_id}/event/gift", headers=stack.headers(user), json={
            "deltas": {"intrigue": -1.0, "patience": -1.0, "tension": 1.0}, "label": "cold shoulder"})
        assert response.status_code == 200, response.text

    await page.goto(f"{stack.url}/#token={stack.token(user)}")
    await expect(page.get_by_label("Your message")).to_be_enabled()
    await page.get_by_label("Your message").fill("Hello? Are you still there? Talk to me please.")
    await page.get_by_label("Your message").press("Enter")
    ghost = page.locator("#chat-log .turn.assistant").last
    await expect(ghost).to_have_attribute("data-kind", "ghost", timeout=15_000)
    await expect(ghost.locator(".text")).to_have_text("(seen, no reply)")  # as `rapport chat` shows it

    # Regenerate the ghost: a reply, 2/2; ‹ goes back to the ghost (1/2, which the history leaves out), › again.
    await ghost.get_by_role("button", name="Regenerate reply (it was seen, no reply)").click()
    reply = page.locator("#chat-log .turn.assistant").last
    await expect(reply.locator(".swipe-position")).to_have_text("2/2", timeout=15_000)
    text = (await stack.client.get(f"/comp/chat/{session_id}/history", headers=stack.headers(user))
            ).json()["messages"][-1]["content"]
    assert text.strip()
    await expect(reply.locator(".text")).to_have_text(text)
    await expect(reply).not_to_have_attribute("data-kind", "ghost")
    await reply.get_by_role("button", name="Previous reply").click()
    await expect(reply.locator(".swipe-position")).to_have_text("1/2")
    await expect(reply.locator(".text")).to_have_text("(seen, no reply)")
    await expect(reply).to_have_attribute("data-kind", "ghost")
    await reply.get_by_role("button", name="Next reply").click()
    await expect(reply.locator(".swipe-position")).to_have_text("2/2")
    await expect(reply.locator(".text")).to_have_text(text)
    assert browser_page.errors == []
