CREATE SCHEMA IF NOT EXISTS chat;

CREATE TABLE chat.personas (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name            text NOT NULL UNIQUE,
    system_prompt   text NOT NULL,
    tip_personality text NOT NULL DEFAULT '',
    art_metadata    jsonb NOT NULL DEFAULT '{}',
    card            jsonb,
    source          text NOT NULL DEFAULT 'toml',
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);

-- One user's copy of a persona: relationship memory and affinity continuity hang on it.
CREATE TABLE chat.persona_instances (
    id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id    uuid NOT NULL,
    persona_id uuid NOT NULL REFERENCES chat.personas (id) ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (user_id, persona_id)
);

CREATE TABLE chat.sessions (
    id                 uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id            uuid NOT NULL,
    instance_id        uuid NOT NULL REFERENCES chat.persona_instances (id) ON DELETE CASCADE,
    is_demo            boolean NOT NULL DEFAULT false,
    started_at         timestamptz NOT NULL DEFAULT now(),
    last_active_at     timestamptz NOT NULL DEFAULT now(),
    message_count      int NOT NULL DEFAULT 0,
    user_message_count int NOT NULL DEFAULT 0,
    usage              jsonb NOT NULL DEFAULT '{}',
    cost               double precision NOT NULL DEFAULT 0
);
CREATE INDEX sessions_user_idx ON chat.sessions (user_id, last_active_at DESC);
CREATE INDEX sessions_instance_idx ON chat.sessions (instance_id, last_active_at DESC);

-- Messages; ids are ULIDs (time-ordered), so (session_id, id) is chronological.
CREATE TABLE chat.messages (
    id            text PRIMARY KEY,
    session_id    uuid NOT NULL REFERENCES chat.sessions (id) ON DELETE CASCADE,
    user_id       uuid NOT NULL,
    role          text NOT NULL CHECK (role IN ('user', 'assistant', 'event')),
    kind          text NOT NULL DEFAULT 'chat' CHECK (kind IN ('chat', 'ghost', 'gift')),
    content       text NOT NULL,
    client_msg_id text,
    turn_id       text,
    model         text,
    usage         jsonb,
    truncated     boolean NOT NULL DEFAULT false,
    sent_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX messages_session_idx ON chat.messages (session_id, id);
CREATE UNIQUE INDEX messages_client_msg_idx ON chat.messages (session_id, client_msg_id) WHERE role = 'user';

-- One row per turn: its state, and the frames it produced (for exact replay) and what explains it.
CREATE TABLE chat.turns (
    id              text PRIMARY KEY,
    session_id      uuid NOT NULL REFERENCES chat.sessions (id) ON DELETE CASCADE,
    user_id         uuid NOT NULL,
    client_msg_id   text NOT NULL,
    user_message_id text NOT NULL,
    status          text NOT NULL DEFAULT 'running' CHECK (status IN ('running', 'done', 'failed')),
    frames          jsonb NOT NULL DEFAULT '[]',
    explain         jsonb NOT NULL DEFAULT '{}',
    error           text,
    started_at      timestamptz NOT NULL DEFAULT now(),
    finished_at     timestamptz,
    UNIQUE (session_id, client_msg_id)
);
CREATE INDEX turns_running_idx ON chat.turns (status) WHERE status = 'running';

-- Audit of every PDE judge call.
CREATE TABLE chat.decision_events (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    run_id          text NOT NULL,
    turn_id         text NOT NULL,
    session_id      uuid NOT NULL REFERENCES chat.sessions (id) ON DELETE CASCADE,
    status          text NOT NULL CHECK (status IN ('ok', 'empty', 'parse_error', 'upstream_error')),
    proposed_action text,
    final_action    text NOT NULL,
    inputs          jsonb NOT NULL DEFAULT '{}',
    output          jsonb NOT NULL DEFAULT '{}',
    model           text NOT NULL DEFAULT '',
    usage           jsonb NOT NULL DEFAULT '{}',
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX decision_events_turn_idx ON chat.decision_events (turn_id);

-- Durable post-process outbox: written in the same transaction as the assistant message.
CREATE TABLE chat.outbox (
    id              bigserial PRIMARY KEY,
    turn_id         text NOT NULL,
    target          text NOT NULL CHECK (target IN ('affinity', 'memory', 'insight')),
    payload         jsonb NOT NULL,
    trace_context   jsonb NOT NULL DEFAULT '{}',
    status          text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'done', 'dead')),
    attempts        int NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    claimed_until   timestamptz,
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    done_at         timestamptz,
    UNIQUE (turn_id, target)
);
CREATE INDEX outbox_due_idx ON chat.outbox (next_attempt_at) WHERE status = 'pending';
