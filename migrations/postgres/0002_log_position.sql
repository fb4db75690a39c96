-- Cluster mode (src/cluster): how far this database holds the cluster's log (a JetStream
-- stream): every entry up to `seq` is written, and `created_ns` / `user_id` are the sequencer's
-- state after it, so a starting node replays the stream from seq + 1 onto what it loaded. Every
-- node writes what it applies, so the row is raised by whichever node is furthest; never
-- lowered. One row per stream.
CREATE TABLE log_position (
    stream     TEXT   PRIMARY KEY,
    seq        BIGINT NOT NULL,
    created_ns BIGINT NOT NULL,
    user_id    BIGINT NOT NULL
);
