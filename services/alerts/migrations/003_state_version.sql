-- A random token per write of a key's state: the service keeps states in memory between
-- batches and re-reads one only when its token in the table differs (a rolled-back batch,
-- another replica), so busy places are not decoded again for every batch.
ALTER TABLE rule_state ADD COLUMN version uuid;
