-- Outbox jobs carry the peer's request serialized (protobuf), and whose job it is: the user (so
-- "delete my data" finds every job of the user) and the session (jobs of one session are delivered
-- in order). Rows written before keep their JSON `payload` and are still delivered.
ALTER TABLE chat.outbox ADD COLUMN request bytea;
ALTER TABLE chat.outbox ADD COLUMN user_id uuid;
ALTER TABLE chat.outbox ADD COLUMN session_id uuid;
ALTER TABLE chat.outbox ALTER COLUMN payload DROP NOT NULL;
UPDATE chat.outbox SET user_id = (payload->>'user_id')::uuid
    WHERE payload->>'user_id' ~* '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$';
UPDATE chat.outbox SET session_id = (payload->>'session_id')::uuid
    WHERE payload->>'session_id' ~* '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$';
CREATE INDEX outbox_user_idx ON chat.outbox (user_id);
