-- depends: 0005_store_events_function
-- notify_store_events plans its statements for every call (bench/store_path.py, docs/benchmarks.md).
--
-- PL/pgSQL caches the plans of a function's statements per connection and, after five calls, may keep
-- a generic one for good. Planned while `notifications` was small (a new deployment, a fresh database),
-- that plan finds "pairs already stored" with a sequential scan of the whole table, and keeps doing so
-- as the table grows: on a database filled during the run, a 2,000-recipient event took 523 ms (p50)
-- against 161 ms for the same statements sent one by one, and 100 recipients 33 ms against 12 ms.
-- A custom plan per call costs what the five separate statements cost anyway (they were planned on
-- every call too) and follows the table as it grows.
ALTER FUNCTION notify_store_events(text[], text[], text[], text[], text[], text[], text[], text[], text[], int[])
    SET plan_cache_mode = force_custom_plan;
