-- At most one relay serves a workspace as its owner. A relay claiming ownership
-- demotes the previous owner in the same transaction (store::set_directory); this
-- index makes two concurrent claims (two control-plane replicas) fail instead of both
-- winning. Rows written before it existed may hold two owners: keep the first.
UPDATE directory SET standby = 1
WHERE standby = 0 AND EXISTS (
    SELECT 1 FROM directory AS other
    WHERE other.workspace = directory.workspace
      AND other.standby = 0
      AND other.relay < directory.relay
);
CREATE UNIQUE INDEX directory_one_owner ON directory (workspace) WHERE standby = 0;
