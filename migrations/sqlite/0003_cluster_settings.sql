-- Cluster mode (src/cluster): the settings that applying a cluster's log depends on (TTLs,
-- mailbox capacity, caps), as the first node to start recorded them. A node whose settings
-- differ refuses to start: it would apply the same log differently. One row per stream; to
-- change them, stop every node, delete the row, and start the nodes with the new settings.
CREATE TABLE cluster_settings (
    stream   TEXT PRIMARY KEY,
    settings TEXT NOT NULL
);
