-- Issued tokens. key_id names the HMAC key that signed the token, so a token stays
-- verifiable while its key is retired, and is rejected once the key is gone.
CREATE TABLE tokens (
    id          BIGINT PRIMARY KEY,
    user_id     BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    key_id      VARCHAR(64) NOT NULL,
    token_hash  VARCHAR(64) NOT NULL UNIQUE,
    issued_at   TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
    expires_at  TIMESTAMP NOT NULL,
    revoked_at  TIMESTAMP
);

CREATE INDEX tokens_user_id_idx ON tokens (user_id);
CREATE INDEX tokens_key_id_idx ON tokens (key_id);
