-- chatbus schema for the PostgreSQL store; mirrors migrations/sqlite/0001_init.sql.
-- Timestamps are nanoseconds since the Unix epoch (BIGINT, lossless). Session and message ids
-- are 128 random bits stored as `uuid` (16 bytes): its text form without the dashes is the
-- 32 lowercase hex digits the API shows.

CREATE TABLE users (
    id           BIGINT PRIMARY KEY,
    uuid         TEXT   NOT NULL UNIQUE,
    display_name TEXT   NOT NULL DEFAULT '',
    -- newest message timestamp culled from the user's mailbox (part of the gap watermark)
    left_ns      BIGINT
);

-- The highest user id ever stored, deleted users included (SQLite's AUTOINCREMENT keeps the same
-- in sqlite_sequence), so a deleted user's id is never handed out again after a restart. One row,
-- raised by every user insert.
CREATE TABLE user_id_high (
    one BOOLEAN PRIMARY KEY DEFAULT true CHECK (one),
    id  BIGINT  NOT NULL
);
INSERT INTO user_id_high (id) VALUES (0);

-- last_active_ns is rewritten in batches and indexed nowhere: the free space left in each page
-- lets those updates stay HOT (no index churn, no page hopping).
CREATE TABLE sessions (
    uuid           UUID   PRIMARY KEY,
    user_id        BIGINT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    created_ns     BIGINT NOT NULL,
    last_active_ns BIGINT NOT NULL
) WITH (fillfactor = 80);
-- for the cascade when a user is deleted
CREATE INDEX sessions_user_id ON sessions(user_id);

CREATE TABLE contacts (
    user_a BIGINT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    user_b BIGINT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    PRIMARY KEY (user_a, user_b),
    CHECK (user_a < user_b)
);
-- for the cascade on user_b (user_a is the primary key's prefix)
CREATE INDEX contacts_user_b ON contacts(user_b);

-- Messages outlive their users (they stay in the other mailbox until culled), so no foreign
-- keys. created_ns is unique server-wide and the only key: it makes a retried write a no-op
-- (ON CONFLICT DO NOTHING), restore reads the table in its order, and culling deletes a prefix
-- of it in bounded steps. attachments is the engine's compact JSON text, kept byte for byte
-- (jsonb would reorder keys).
CREATE TABLE messages (
    created_ns  BIGINT PRIMARY KEY,
    uuid        UUID   NOT NULL,
    sender_id   BIGINT NOT NULL,
    receiver_id BIGINT NOT NULL,
    body        TEXT   NOT NULL,
    attachments TEXT
);
