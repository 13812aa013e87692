-- Full-text candidates of one user: a GIN index over (user_id, content_tsv) (btree_gin, a trusted
-- contrib extension) holds one posting list per user and word, so Recall reads only the user's rows
-- that contain a word of the question, whatever the table's size and however many memories the user
-- has. It replaces the content-only index, whose posting lists span every user.
CREATE EXTENSION IF NOT EXISTS btree_gin;
CREATE INDEX memories_user_tsv_idx ON memory.memories USING gin (user_id, content_tsv) WHERE deleted_at IS NULL;
DROP INDEX memory.memories_tsv_idx;
