-- A refresh token presented again after it was rotated: a likely theft.
-- The alert on repeated token reuse counts these.
CREATE TABLE token_reuse_events (
    id          BIGINT PRIMARY KEY,
    token_id    BIGINT NOT NULL REFERENCES tokens (id) ON DELETE CASCADE,
    user_id     BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    client_ip   VARCHAR(45),
    user_agent  TEXT,
    detected_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP
);

CREATE INDEX token_reuse_events_user_idx ON token_reuse_events (user_id, detected_at);
