-- Who said what a memory remembers (the user, the persona, or both: a plan, a shared laugh), the days its
-- text refers to (relative expressions resolved at ingest: "yesterday" in a message of 3 May → 2 May), and
-- the statements a merge folded into it (a merge keeps the most informative text and never drops the other).
ALTER TABLE memory.memories
    ADD COLUMN speaker         text NOT NULL DEFAULT 'user' CHECK (speaker IN ('user', 'persona', 'both')),
    ADD COLUMN event_dates     date[] NOT NULL DEFAULT '{}',
    ADD COLUMN merged_contents text[] NOT NULL DEFAULT '{}';

-- Rows written before: the distilled memories that were the persona's, or both sides'.
UPDATE memory.memories SET speaker = 'persona' WHERE content LIKE 'Persona promised: %';
UPDATE memory.memories SET speaker = 'both'
WHERE content LIKE 'Plan made together: %' OR content LIKE 'Shared a laugh: %' OR content LIKE 'Conflict repaired: %';

CREATE INDEX memories_event_dates_idx ON memory.memories USING gin (event_dates) WHERE deleted_at IS NULL;

-- The persona's name with each ingested turn: the sweeper attributes what the persona said ("Elena promised you…").
ALTER TABLE memory.ingested_turns ADD COLUMN persona_name text NOT NULL DEFAULT '';
