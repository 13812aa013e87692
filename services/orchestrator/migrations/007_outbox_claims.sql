-- A post-process job's claim names the replica delivering it (issue 13): when that replica stops or stops
-- beating, its claimed jobs are due again at once instead of after the claim's two-minute lease.
ALTER TABLE chat.outbox ADD COLUMN claimed_by uuid;
