-- Room on each page for the settlement's new row version, so that it is a heap-only (HOT)
-- update: a claim is inserted, then marked 'accepted' moments later (no indexed column
-- changes). On full pages (fillfactor 100) every settlement wrote its row again elsewhere
-- with a new entry in each of the three indexes: benchmarks.intake_store, 300-report groups,
-- PostgreSQL's CPU 31-37 -> 9 µs and WAL 776-785 -> 156 bytes a settled report (0 -> 100 %
-- heap-only). 50: a group's rows fill their pages together and are all updated together, so
-- each page needs room for all of them twice (70 left 60 % of the updates non-HOT). The cost
-- is space: settled pages stay about half full (the indexes no longer grow by a dead entry a
-- report). Applies to pages written from now on.
ALTER TABLE intake_reports SET (fillfactor = 50);
