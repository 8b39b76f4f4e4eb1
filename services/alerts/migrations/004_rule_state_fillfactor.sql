-- Every batch rewrites the rule state of the keys it touched. Room on each page lets
-- PostgreSQL update a row in place (a HOT update: no new primary-key entry), which is most of
-- the state writes.
ALTER TABLE rule_state SET (fillfactor = 80);
ALTER TABLE rule_incidents SET (fillfactor = 90);
