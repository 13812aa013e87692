CREATE SCHEMA IF NOT EXISTS memory;

-- Both layers in one table: instance_id NULL = profile layer, else the relationship layer of that pair.
CREATE TABLE memory.memories (
    id                 uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id            uuid NOT NULL,
    instance_id        uuid,
    session_id         uuid,
    content            text NOT NULL,
    category           text NOT NULL CHECK (category IN ('fact','preference','event','emotion','relation','moment','thread')),
    importance         real NOT NULL DEFAULT 0.5 CHECK (importance BETWEEN 0 AND 1),
    embedding          vector({{EMBEDDING_DIM}}),
    embedding_model    text NOT NULL,
    source_message_ids text[] NOT NULL DEFAULT '{}',
    source_turn_id     text,
    occurred_at        timestamptz NOT NULL DEFAULT now(),
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    recall_count       int NOT NULL DEFAULT 0,
    last_recalled_at   timestamptz,
    deleted_at         timestamptz,
    metadata           jsonb NOT NULL DEFAULT '{}',
    content_tsv        tsvector GENERATED ALWAYS AS (to_tsvector('english', content)) STORED
);
CREATE INDEX memories_embedding_idx ON memory.memories USING hnsw (embedding vector_cosine_ops);
CREATE INDEX memories_tsv_idx ON memory.memories USING gin (content_tsv);
CREATE INDEX memories_owner_idx ON memory.memories (user_id, instance_id) WHERE deleted_at IS NULL;

-- Turns already ingested (idempotency by turn id).
CREATE TABLE memory.ingested_turns (
    turn_id     text PRIMARY KEY,
    user_id     uuid NOT NULL,
    session_id  uuid,
    memory_ids  uuid[] NOT NULL DEFAULT '{}',
    ingested_at timestamptz NOT NULL DEFAULT now()
);

-- The embedder the stored vectors were made with (fixed at migrate time).
CREATE TABLE memory.embedding_config (
    id    boolean PRIMARY KEY DEFAULT true CHECK (id),
    model text NOT NULL,
    dim   int NOT NULL
);
INSERT INTO memory.embedding_config (model, dim) VALUES ('{{EMBEDDING_MODEL}}', {{EMBEDDING_DIM}});
