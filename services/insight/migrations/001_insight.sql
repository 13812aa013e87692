CREATE SCHEMA IF NOT EXISTS insight;

-- One structured profile per user: field -> {value, sources, updated_at, confidence}.
-- The queryable fields are also kept as typed columns (normalised like domain.normalize_term), written in
-- the same statement as `insights`, so QueryProfiles is an indexed SQL query.
CREATE TABLE insight.profiles (
    user_id        uuid PRIMARY KEY,
    insights       jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(insights) = 'object'),
    training_level numeric(4,3) NOT NULL DEFAULT 0 CHECK (training_level BETWEEN 0 AND 1),
    city           text,
    occupation     text,
    mbti           text,
    interests      text[] NOT NULL DEFAULT '{}',
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX profiles_city_idx ON insight.profiles (city);
CREATE INDEX profiles_occupation_idx ON insight.profiles (occupation);
CREATE INDEX profiles_mbti_idx ON insight.profiles (mbti);
CREATE INDEX profiles_interests_idx ON insight.profiles USING gin (interests);
CREATE INDEX profiles_training_level_idx ON insight.profiles (training_level);

-- Turns already extracted: ExtractTurn is idempotent by turn id (the outbox delivers at least once).
CREATE TABLE insight.extracted_turns (
    turn_id        text PRIMARY KEY,
    user_id        uuid NOT NULL,
    updated_fields text[] NOT NULL DEFAULT '{}',
    extracted_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX extracted_turns_user_idx ON insight.extracted_turns (user_id);

-- Every extraction run, stage by stage (rules | facts | fields). An upstream error is recorded and
-- the turn retried, so one turn can have several rows per stage.
CREATE TABLE insight.extraction_events (
    id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id    uuid NOT NULL,
    turn_id    text NOT NULL,
    stage      text NOT NULL CHECK (stage IN ('rules','facts','fields')),
    status     text NOT NULL CHECK (status IN ('ok','empty','parse_error','upstream_error')),
    payload    jsonb NOT NULL DEFAULT '{}',
    model      text NOT NULL DEFAULT '',
    usage      jsonb NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX extraction_events_turn_idx ON insight.extraction_events (turn_id, created_at);
CREATE INDEX extraction_events_user_idx ON insight.extraction_events (user_id, created_at DESC);

-- Copies of every profile at each firing of SNAPSHOT_CRON; captured_at is the scheduled firing
-- time, so two replicas firing together write one row per user.
CREATE TABLE insight.snapshots (
    id             uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id        uuid NOT NULL,
    captured_at    timestamptz NOT NULL,
    insights       jsonb NOT NULL,
    training_level numeric(4,3) NOT NULL,
    UNIQUE (user_id, captured_at)
);
