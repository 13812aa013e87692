-- Turn ownership by lease (issue 13): every orchestrator process is a replica with a heartbeat; a running turn
-- names its owner. Only turns whose owner stopped, or stopped beating, are failed by another replica — a starting
-- replica never touches a live turn of another one. A replica also fails its own running turns that it no longer
-- runs (their failure could not be recorded, e.g. during a database outage).
CREATE TABLE chat.replicas (
    id           uuid PRIMARY KEY,
    started_at   timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now(),
    stopped_at   timestamptz
);
ALTER TABLE chat.turns ADD COLUMN owner uuid;
