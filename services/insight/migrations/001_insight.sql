CREATE SCHEMA IF NOT EXISTS insight;

-- One structured profile per user: field -> {value, sources, updated_at, confidence}.
CREATE TABLE insight.profiles (
    user_id        uuid PRIMARY KEY,
    insights       jsonb NOT NULL DEFAULT '{}',
    training_level numeric(4,3) NOT NULL DEFAULT 0,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);

-- Every extraction run, for debugging and idempotency by turn id.
CREATE TABLE insight.extraction_events (
    id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id    uuid NOT NULL,
    turn_id    text NOT NULL,
    stage      text NOT NULL,
    status     text NOT NULL CHECK (status IN ('ok','empty','parse_error','upstream_error')),
    payload    jsonb NOT NULL DEFAULT '{}',
    model      text NOT NULL DEFAULT '',
    usage      jsonb NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX extraction_events_turn_stage_idx ON insight.extraction_events (turn_id, stage);
CREATE INDEX extraction_events_user_idx ON insight.extraction_events (user_id, created_at DESC);

CREATE TABLE insight.snapshots (
    id             uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id        uuid NOT NULL,
    captured_at    timestamptz NOT NULL,
    insights       jsonb NOT NULL,
    training_level numeric(4,3) NOT NULL,
    UNIQUE (user_id, captured_at)
);
