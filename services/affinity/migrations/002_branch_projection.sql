-- Branch projection (issue 10): a session's state is the replay of its active branch's events from the
-- vector the session was opened with. `start_vector` (the six axes as JSON) and `started_at` keep it.
-- Existing sessions: the first event's `state_before` at its time (exactly where the replay of that session
-- starts, decay until then included), or, with no events, the current vector as of `updated_at`.
ALTER TABLE affinity.vectors ADD COLUMN start_vector jsonb, ADD COLUMN started_at timestamptz;
UPDATE affinity.vectors v SET start_vector = first.state_before, started_at = first.created_at
FROM (SELECT DISTINCT ON (session_id) session_id, state_before, created_at
      FROM affinity.events ORDER BY session_id, seq) first
WHERE first.session_id = v.session_id;
UPDATE affinity.vectors
SET start_vector = jsonb_build_object('warmth', warmth, 'trust', trust, 'intimacy', intimacy, 'intrigue', intrigue,
                                      'patience', patience, 'tension', tension),
    started_at = updated_at
WHERE start_vector IS NULL;
ALTER TABLE affinity.vectors ALTER COLUMN start_vector SET NOT NULL, ALTER COLUMN started_at SET NOT NULL,
    ADD CONSTRAINT vectors_start_vector_object CHECK (jsonb_typeof(start_vector) = 'object');

-- The turns of a session that are not on its active branch (one row per session that has any):
-- `excluded` — ProjectBranch's excluded_turn_ids, replaced by each projection: a late ApplyTurn or RecordGhost
-- of one records its event without changing the state; `erased` — surgically deleted turns (their events are
-- gone for good): a late write of one records nothing. Arrays, so a branch switch writes one row.
CREATE TABLE affinity.off_branch_turns (
    session_id uuid PRIMARY KEY REFERENCES affinity.vectors (session_id) ON DELETE CASCADE,
    excluded   text[] NOT NULL DEFAULT '{}',
    erased     text[] NOT NULL DEFAULT '{}'
);
