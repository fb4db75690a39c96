-- chatbus schema for the embedded SQLite store.
-- Timestamps are nanoseconds since the Unix epoch (INTEGER, lossless).

-- AUTOINCREMENT: sqlite_sequence remembers the highest id ever stored, so a deleted user's id
-- is never handed out again after a restart.
CREATE TABLE users (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    uuid         TEXT    NOT NULL UNIQUE,
    display_name TEXT    NOT NULL DEFAULT '',
    -- newest message timestamp culled from the user's mailbox (part of the gap watermark)
    left_ns      INTEGER
);

CREATE TABLE sessions (
    uuid           TEXT    PRIMARY KEY,  -- 32 lowercase hex digits
    user_id        INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    created_ns     INTEGER NOT NULL,
    last_active_ns INTEGER NOT NULL
);
CREATE INDEX sessions_user_id ON sessions(user_id);

CREATE TABLE contacts (
    user_a INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    user_b INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    PRIMARY KEY (user_a, user_b),
    CHECK (user_a < user_b)
) WITHOUT ROWID;
CREATE INDEX contacts_user_b ON contacts(user_b);

-- Messages outlive their users (they stay in the other mailbox until culled), so no foreign
-- keys. created_ns is unique server-wide and is the rowid: restore scans it in order and
-- culling deletes a prefix of it.
CREATE TABLE messages (
    created_ns  INTEGER PRIMARY KEY,
    uuid        TEXT    NOT NULL,
    sender_id   INTEGER NOT NULL,
    receiver_id INTEGER NOT NULL,
    body        TEXT    NOT NULL,
    attachments TEXT
);
