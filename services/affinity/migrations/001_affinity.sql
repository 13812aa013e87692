CREATE SCHEMA IF NOT EXISTS affinity;

-- One relationship vector per chat session.
CREATE TABLE affinity.vectors (
    session_id    uuid PRIMARY KEY,
    user_id       uuid NOT NULL,
    instance_id   uuid NOT NULL,
    is_demo       boolean NOT NULL DEFAULT false,
    warmth        double precision NOT NULL,
    trust         double precision NOT NULL,
    intimacy      double precision NOT NULL,
    intrigue      double precision NOT NULL,
    patience      double precision NOT NULL,
    tension       double precision NOT NULL,
    ghost_streak  int NOT NULL DEFAULT 0,
    total_ghosts  int NOT NULL DEFAULT 0,
    last_ghost_at timestamptz,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX vectors_pair_idx ON affinity.vectors (user_id, instance_id, updated_at DESC);

-- Every change: message (turn), ghost, gift. turn_id unique per session → a retried job applies once.
CREATE TABLE affinity.events (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    session_id       uuid NOT NULL REFERENCES affinity.vectors (session_id) ON DELETE CASCADE,
    user_id          uuid NOT NULL,
    kind             text NOT NULL CHECK (kind IN ('message', 'ghost', 'gift')),
    turn_id          text,
    deltas           jsonb NOT NULL DEFAULT '{}',
    effective_deltas jsonb NOT NULL DEFAULT '{}',
    reason           text NOT NULL DEFAULT '',
    skipped          boolean NOT NULL DEFAULT false,
    label            text,
    metadata         jsonb NOT NULL DEFAULT '{}',
    state_before     jsonb NOT NULL,
    state_after      jsonb NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX events_turn_idx ON affinity.events (session_id, kind, turn_id) WHERE turn_id IS NOT NULL;
CREATE INDEX events_session_idx ON affinity.events (session_id, created_at DESC);
CREATE INDEX events_user_idx ON affinity.events (user_id);
