-- Conversations as an append-only event log (issue 10, roleplay.md "Event log").
--
-- Messages form a tree: each has a parent (the message before it on its path). A branch is a path,
-- named by its last message (`head_id`); a session has one active branch. Every change is an event,
-- appended in the same transaction as the rows it changes, which are its projection. Nothing is
-- removed but by a surgical delete (the message's text is erased; its id and place stay) or "delete
-- my data".

ALTER TABLE chat.messages ADD COLUMN parent_id text;
ALTER TABLE chat.messages ADD COLUMN deleted_at timestamptz;
CREATE INDEX messages_parent_idx ON chat.messages (parent_id);

CREATE TABLE chat.branches (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    session_id  uuid NOT NULL REFERENCES chat.sessions (id) ON DELETE CASCADE,
    head_id     text,  -- the branch's last message (NULL: nothing said on it yet)
    forked_from text,  -- the message it continues from (NULL: the session's first branch)
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX branches_session_idx ON chat.branches (session_id, created_at);
ALTER TABLE chat.sessions ADD COLUMN active_branch_id uuid REFERENCES chat.branches (id) ON DELETE SET NULL;
-- The trailing system text a client sent after its last message on the previous turn (its post-history
-- instruction), to tell a changed instruction (summarize, impersonate) from the usual one.
ALTER TABLE chat.sessions ADD COLUMN post_history text;

CREATE TABLE chat.events (
    seq        bigserial PRIMARY KEY,
    id         text NOT NULL UNIQUE,
    session_id uuid NOT NULL REFERENCES chat.sessions (id) ON DELETE CASCADE,
    user_id    uuid NOT NULL,
    kind       text NOT NULL CHECK (kind IN ('user_message', 'reply', 'ghost', 'regenerated', 'branched',
                   'branch_activated', 'alternative_selected', 'message_deleted', 'imported', 'gift', 'effects')),
    actor      text NOT NULL CHECK (actor IN ('user', 'client', 'system')),
    message_id text,
    branch_id  uuid,
    data       jsonb NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX events_session_idx ON chat.events (session_id, seq);
CREATE INDEX events_user_idx ON chat.events (user_id);

-- Existing sessions become single-branch logs with no loss: messages chained in their order, one
-- branch per session ending at its last message, one event per message (actor system, migrated).
UPDATE chat.messages m SET parent_id = p.parent_id
FROM (SELECT id, lag(id) OVER (PARTITION BY session_id ORDER BY id) AS parent_id FROM chat.messages) p
WHERE p.id = m.id;

INSERT INTO chat.branches (session_id, head_id, created_at)
SELECT s.id, (SELECT max(m.id) FROM chat.messages m WHERE m.session_id = s.id), s.started_at
FROM chat.sessions s;

UPDATE chat.sessions s SET active_branch_id = b.id FROM chat.branches b WHERE b.session_id = s.id;

INSERT INTO chat.events (id, session_id, user_id, kind, actor, message_id, branch_id, data, created_at)
SELECT 'mig-' || m.id, m.session_id, m.user_id,
       CASE WHEN m.imported THEN 'imported'
            WHEN m.role = 'user' THEN 'user_message'
            WHEN m.kind = 'ghost' THEN 'ghost'
            WHEN m.kind = 'gift' THEN 'gift'
            ELSE 'reply' END,
       'system', m.id, s.active_branch_id,
       jsonb_build_object('parent_id', m.parent_id, 'role', m.role, 'kind', m.kind, 'migrated', true),
       m.sent_at
FROM chat.messages m JOIN chat.sessions s ON s.id = m.session_id
ORDER BY m.id;

-- Delivery of a session's post-process jobs in order, per target.
CREATE INDEX outbox_session_order_idx ON chat.outbox (session_id, target, id) WHERE status = 'pending';

-- The branch a turn answers on (its reply becomes that branch's head).
ALTER TABLE chat.turns ADD COLUMN branch_id uuid;
UPDATE chat.turns t SET branch_id = s.active_branch_id FROM chat.sessions s WHERE s.id = t.session_id;
-- A user message sent while an earlier turn of its branch is still answered joins the tree when its own
-- turn starts (after that reply): until then it is stored but not yet attached.
ALTER TABLE chat.turns ADD COLUMN attached boolean NOT NULL DEFAULT true;

-- Outbox jobs are not only a turn's post-process: `call` names the peer RPC (post_process = ApplyTurn /
-- IngestTurn / ExtractTurn; project_branch, hide_messages, erase_messages follow the active branch).
-- A job's `turn_id` is its key: the turn, or the event that made the job.
ALTER TABLE chat.outbox ADD COLUMN call text NOT NULL DEFAULT 'post_process'
    CHECK (call IN ('post_process', 'project_branch', 'hide_messages', 'erase_messages'));
ALTER TABLE chat.outbox DROP CONSTRAINT outbox_turn_id_target_key;
ALTER TABLE chat.outbox ADD CONSTRAINT outbox_job_key UNIQUE (turn_id, target, call);
