-- The profile follows the conversation's active branch (issue 10).
-- The messages of each session that are off its active branch (SetHiddenMessages replaces a session's set):
-- a field whose every source message is hidden in some session of the user is left out of GetProfile, its
-- rendering, the typed query columns and QueryProfiles, until a source is visible again.
CREATE TABLE insight.hidden_messages (
    user_id    uuid NOT NULL,
    session_id uuid NOT NULL,
    message_id text NOT NULL,
    PRIMARY KEY (user_id, message_id, session_id)
);
CREATE INDEX hidden_messages_session_idx ON insight.hidden_messages (user_id, session_id);

-- Messages erased by a surgical delete (EraseMessages): a late extraction citing only them merges nothing.
CREATE TABLE insight.erased_messages (
    user_id    uuid NOT NULL,
    message_id text NOT NULL,
    erased_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, message_id)
);
