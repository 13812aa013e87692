CREATE SCHEMA IF NOT EXISTS affinity;

-- One relationship vector per chat session. The axes are stored as of `updated_at`; readers decay
-- them lazily to "now", and every write first materialises that decay. `version` grows by one per
-- write, so a watcher can tell that it has seen every change.
CREATE TABLE affinity.vectors (
    session_id    uuid PRIMARY KEY,
    user_id       uuid NOT NULL,
    instance_id   uuid NOT NULL,
    is_demo       boolean NOT NULL DEFAULT false,
    warmth        double precision NOT NULL CHECK (warmth BETWEEN -1 AND 1),
    trust         double precision NOT NULL CHECK (trust BETWEEN 0 AND 1),
    intimacy      double precision NOT NULL CHECK (intimacy BETWEEN 0 AND 1),
    intrigue      double precision NOT NULL CHECK (intrigue BETWEEN 0 AND 1),
    patience      double precision NOT NULL CHECK (patience BETWEEN 0 AND 1),
    tension       double precision NOT NULL CHECK (tension BETWEEN 0 AND 1),
    ghost_streak  int NOT NULL DEFAULT 0 CHECK (ghost_streak >= 0),
    total_ghosts  int NOT NULL DEFAULT 0 CHECK (total_ghosts >= 0),
    last_ghost_at timestamptz,
    version       bigint NOT NULL DEFAULT 0,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);
-- Continuity: the latest vector of a user × persona instance.
CREATE INDEX vectors_pair_idx ON affinity.vectors (user_id, instance_id, updated_at DESC);

-- Every change of a vector: message (turn), ghost, gift. `seq` orders them; turn_id is unique per
-- session and kind, so a retried post-process job (or a repeated ghost) applies once.
CREATE TABLE affinity.events (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    seq              bigint GENERATED ALWAYS AS IDENTITY,
    session_id       uuid NOT NULL REFERENCES affinity.vectors (session_id) ON DELETE CASCADE,
    user_id          uuid NOT NULL,
    kind             text NOT NULL CHECK (kind IN ('message', 'ghost', 'gift')),
    turn_id          text,
    deltas           jsonb NOT NULL DEFAULT '{}',  -- raw: rule + evaluator (message) or the gift's
    effective_deltas jsonb NOT NULL DEFAULT '{}',  -- after − before, per axis of `deltas`
    rule_deltas      jsonb NOT NULL DEFAULT '{}',
    evaluator_deltas jsonb NOT NULL DEFAULT '{}',
    evaluator        text NOT NULL DEFAULT '',     -- offline | llm:<model> | '' (not a message)
    evaluator_error  text,                         -- unusable evaluator output (zero deltas applied)
    reason           text NOT NULL DEFAULT '',
    skipped          boolean NOT NULL DEFAULT false,
    label            text,
    metadata         jsonb NOT NULL DEFAULT '{}',
    state_before     jsonb NOT NULL,               -- the vector decayed to the event time
    state_after      jsonb NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX events_turn_idx ON affinity.events (session_id, kind, turn_id) WHERE turn_id IS NOT NULL;
CREATE INDEX events_session_idx ON affinity.events (session_id, seq DESC);
CREATE INDEX events_user_idx ON affinity.events (user_id);
