-- `emails_claim (priority, next_at)` covers what `emails_next (next_at)`
-- was for: the claim walks the priorities through it, and so does the
-- dispatcher's look-up of the next due time (`min(next_at)` per priority,
-- one index seek each). Every enqueue, claim and retry wrote a page of
-- `emails_next` too, inside the database's one write lock.
DROP INDEX IF EXISTS emails_next;
