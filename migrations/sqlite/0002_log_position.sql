-- Mirrors migrations/postgres/0002_log_position.sql (cluster mode runs on PostgreSQL; SQLite
-- keeps the same schema so that every store takes every op).
CREATE TABLE log_position (
    stream     TEXT    PRIMARY KEY,
    seq        INTEGER NOT NULL,
    created_ns INTEGER NOT NULL,
    user_id    INTEGER NOT NULL
) WITHOUT ROWID;
