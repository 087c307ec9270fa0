-- One daily schedule in force per account (issue 27): the platform sends one
-- mass message a natural day (READING R11), so a second daily schedule of
-- the same account collided with the first every day, and one of them was
-- silently skipped. `pubbot broadcast schedule` now refuses a second one
-- (or replaces the first with --replace); this index makes it so whatever
-- writes the table, two operators at once included.
--
-- An existing deployment may have several: the newest stays in force, the
-- older ones are disabled (not cancelled: `broadcast list` still shows
-- them, and the operator decides). Each had been skipped on every day the
-- newest took anyway.
UPDATE broadcast_schedules s
   SET enabled = false
 WHERE s.enabled AND s.cancelled_at IS NULL
   AND EXISTS (SELECT 1 FROM broadcast_schedules t
                WHERE t.app_key = s.app_key AND t.mcid = s.mcid
                  AND t.enabled AND t.cancelled_at IS NULL AND t.id > s.id);

CREATE UNIQUE INDEX broadcast_schedules_one_in_force
    ON broadcast_schedules (app_key, mcid)
 WHERE enabled AND cancelled_at IS NULL;
