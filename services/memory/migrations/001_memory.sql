CREATE SCHEMA IF NOT EXISTS memory;

-- Full text matches exact words (lower-cased, English stop words dropped, no stemming): the vector
-- side already covers paraphrase and inflection in every language, so the lexical side is kept
-- precise — names, rare words, numbers — instead of matching "living" to "lives".
CREATE TEXT SEARCH DICTIONARY memory.english_stopwords (TEMPLATE = pg_catalog.simple, STOPWORDS = english);
CREATE TEXT SEARCH CONFIGURATION memory.exact_words (COPY = pg_catalog.simple);
ALTER TEXT SEARCH CONFIGURATION memory.exact_words
    ALTER MAPPING FOR asciiword, word, numword, asciihword, hword, hword_asciipart, hword_part, hword_numpart
    WITH memory.english_stopwords;

-- Both layers in one table: instance_id NULL = profile layer, else the relationship layer of that pair.
-- Provenance: session_id, source_message_ids, occurred_at, metadata.source (turn|rules|llm|dreaming|import).
CREATE TABLE memory.memories (
    id                 uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id            uuid NOT NULL,
    instance_id        uuid,
    session_id         uuid,
    content            text NOT NULL CHECK (btrim(content) <> ''),
    category           text NOT NULL CHECK (category IN ('fact','preference','event','emotion','relation','moment','thread')),
    importance         real NOT NULL DEFAULT 0.5 CHECK (importance BETWEEN 0 AND 1),
    embedding          vector({{EMBEDDING_DIM}}) NOT NULL,
    embedding_model    text NOT NULL,
    source_message_ids text[] NOT NULL DEFAULT '{}',
    occurred_at        timestamptz NOT NULL DEFAULT now(),
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    recall_count       int NOT NULL DEFAULT 0,
    last_recalled_at   timestamptz,
    deleted_at         timestamptz,
    metadata           jsonb NOT NULL DEFAULT '{}',
    content_tsv        tsvector GENERATED ALWAYS AS (to_tsvector('memory.exact_words', content)) STORED
);
-- Live rows only: a soft-deleted memory is never a search candidate.
CREATE INDEX memories_embedding_idx ON memory.memories USING hnsw (embedding vector_cosine_ops)
    WHERE deleted_at IS NULL;
CREATE INDEX memories_tsv_idx ON memory.memories USING gin (content_tsv) WHERE deleted_at IS NULL;
CREATE INDEX memories_owner_idx ON memory.memories (user_id, instance_id) WHERE deleted_at IS NULL;
CREATE INDEX memories_listing_idx ON memory.memories (user_id, created_at DESC, id DESC);
CREATE INDEX memories_purge_idx ON memory.memories (deleted_at) WHERE deleted_at IS NOT NULL;

-- Every ingested turn (idempotency by turn id) and this service's own copy of the transcript, which
-- the dreaming sweeper and the rolling summary read. seq orders ingestion (the distillation mark).
CREATE TABLE memory.ingested_turns (
    turn_id          text PRIMARY KEY,
    seq              bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
    user_id          uuid NOT NULL,
    instance_id      uuid NOT NULL,
    session_id       uuid NOT NULL,
    user_message_id  text NOT NULL,
    reply_message_id text NOT NULL DEFAULT '',
    user_text        text NOT NULL,
    reply_text       text NOT NULL DEFAULT '',
    occurred_at      timestamptz NOT NULL,
    memory_ids       uuid[] NOT NULL DEFAULT '{}',
    extraction       text NOT NULL CHECK (extraction IN ('rules', 'llm', 'llm_failed')),
    extraction_error text,
    ingested_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ingested_turns_session_idx ON memory.ingested_turns (session_id, seq);
CREATE INDEX ingested_turns_user_idx ON memory.ingested_turns (user_id, instance_id);

-- Per session: activity, the distillation high-water mark and claim, the summarized range.
CREATE TABLE memory.sessions (
    session_id       uuid PRIMARY KEY,
    user_id          uuid NOT NULL,
    instance_id      uuid NOT NULL,
    last_activity_at timestamptz NOT NULL,
    last_seq         bigint NOT NULL,
    distilled_seq    bigint NOT NULL DEFAULT 0,
    claimed_at       timestamptz,
    claim_token      uuid,
    message_count    int NOT NULL DEFAULT 0,
    summarized_until int NOT NULL DEFAULT 0
);
CREATE INDEX sessions_undistilled_idx ON memory.sessions (last_activity_at) WHERE last_seq > distilled_seq;
CREATE INDEX sessions_user_idx ON memory.sessions (user_id, instance_id);

-- One row per committed distillation (which turns it covered, what it wrote): provenance and audit.
CREATE TABLE memory.distillations (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    session_id  uuid NOT NULL,
    user_id     uuid NOT NULL,
    from_seq    bigint NOT NULL,
    to_seq      bigint NOT NULL,
    memory_ids  uuid[] NOT NULL DEFAULT '{}',
    worker      text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (session_id, from_seq)
);
CREATE INDEX distillations_user_idx ON memory.distillations (user_id);

-- Rolling session summaries, each with the message range it covers (0-based, inclusive).
CREATE TABLE memory.session_summaries (
    session_id          uuid NOT NULL,
    user_id             uuid NOT NULL,
    first_message_index int NOT NULL,
    last_message_index  int NOT NULL,
    content             text NOT NULL,
    method              text NOT NULL CHECK (method IN ('llm', 'extractive')),
    created_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (session_id, last_message_index)
);
CREATE INDEX session_summaries_user_idx ON memory.session_summaries (user_id);

-- The embedder the stored vectors were made with (fixed at migrate time; `rapport memory reembed` changes it).
CREATE TABLE memory.embedding_config (
    id    boolean PRIMARY KEY DEFAULT true CHECK (id),
    model text NOT NULL,
    dim   int NOT NULL CHECK (dim > 0)
);
INSERT INTO memory.embedding_config (model, dim) VALUES ('{{EMBEDDING_MODEL}}', {{EMBEDDING_DIM}});
