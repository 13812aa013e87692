-- The OpenAI-compatible API (gateway.md): per-user API keys, conversations named by the client, and
-- messages imported from a client's transcript.

-- API keys: only a SHA-256 of the key is stored (keys are 32 random url-safe characters, so a fast hash
-- is enough); `prefix` is what a listing shows. A revoked key stays listed with `revoked_at`.
CREATE TABLE chat.api_keys (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id      uuid NOT NULL,
    name         text NOT NULL DEFAULT '',
    prefix       text NOT NULL,
    key_hash     text NOT NULL UNIQUE,
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz,
    revoked_at   timestamptz
);
CREATE INDEX api_keys_user_idx ON chat.api_keys (user_id, created_at);

-- Which client conversation a session is (`chat:<X-Chat-Id>`, `user:<user field>` or `fingerprint:<hash>`),
-- unique per persona instance (user × persona).
ALTER TABLE chat.sessions ADD COLUMN client_key text;
CREATE UNIQUE INDEX sessions_client_key_idx ON chat.sessions (instance_id, client_key) WHERE client_key IS NOT NULL;

-- Messages taken over from a client's transcript when it was edited: never post-processed.
ALTER TABLE chat.messages ADD COLUMN imported boolean NOT NULL DEFAULT false;
