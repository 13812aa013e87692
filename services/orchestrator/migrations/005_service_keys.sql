-- Service keys of the public gRPC API (docs/grpc.md): a backend's credential, which may act for any user
-- of the deployment (the acting user is named per call), limited to its scopes (`chat`, `data`).
-- As for API keys, only a SHA-256 of the key is stored, with a short prefix for listings; a revoked
-- key stays listed with `revoked_at`.
CREATE TABLE chat.service_keys (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    service      text NOT NULL,
    scopes       text[] NOT NULL,
    prefix       text NOT NULL,
    key_hash     text NOT NULL UNIQUE,
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz,
    revoked_at   timestamptz,
    CHECK (cardinality(scopes) > 0)
);
CREATE INDEX service_keys_service_idx ON chat.service_keys (service, created_at);
