-- Memory follows the conversation's active branch (issue 10).
-- The messages of each session that are off its active branch (SetHiddenMessages replaces a session's set).
CREATE TABLE memory.hidden_messages (
    user_id    uuid NOT NULL,
    session_id uuid NOT NULL,
    message_id text NOT NULL,
    PRIMARY KEY (user_id, message_id, session_id)
);
CREATE INDEX hidden_messages_session_idx ON memory.hidden_messages (user_id, session_id);

-- Messages erased by a surgical delete (EraseMessages): a late write citing one drops it as a source, and a
-- memory citing only erased messages is never written.
CREATE TABLE memory.erased_messages (
    user_id    uuid NOT NULL,
    message_id text NOT NULL,
    erased_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, message_id)
);

-- The memories whose every source message is hidden in some session of their user: Recall leaves them out.
-- Kept by every write of sources (store: refresh_visibility). A table of its own rather than a column, so a
-- branch switch flipping thousands of memories writes small rows, never the memories (and their HNSW index).
CREATE TABLE memory.hidden_memories (
    memory_id uuid PRIMARY KEY REFERENCES memory.memories (id) ON DELETE CASCADE,
    user_id   uuid NOT NULL
);
CREATE INDEX hidden_memories_user_idx ON memory.hidden_memories (user_id);
