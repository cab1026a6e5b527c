-- Rollups for the answers that scan every key: spend over weeks and the anomaly scan's
-- candidate search. Measured at 100M events over 30 days (docs/benchmarks.md): most cells of
-- the hourly and 5-minute rollups hold one request, so a report over 30 days or a scan of
-- every key read almost as many rows from them as from usage_events.
--
-- Backfill: both tables are filled from spend_hourly (which holds exactly what usage_events
-- holds), so an existing deployment's history is in them from the start. The backfill must
-- not race with ingestion: `keytrail serve` applies migrations before its ingester starts;
-- with several ingesting processes, stop them before starting the first upgraded one. The
-- file starts by dropping what it creates, so a run killed half way starts over cleanly (the
-- file is recorded as applied only after its last statement).

{{drop_view "spend_daily_mv"}};
{{drop_table "spend_daily"}};
{{drop_view "usage_key_hourly_mv"}};
{{drop_table "usage_key_hourly"}};

-- Spend per UTC day, with every dimension of spend_hourly: spend and budget reports at day,
-- week and month granularity read 24 times fewer cells.
CREATE TABLE IF NOT EXISTS {{create "spend_daily"}}
(
    day DateTime('UTC'),
    project String,
    key_id String,
    service String,
    model String,
    requests UInt64,
    errors UInt64,
    total_input_tokens UInt64,
    total_output_tokens UInt64,
    total_cost_micros Int64{{insert_tag_column}}
)
ENGINE = {{engine "spend_daily" "SummingMergeTree()"}}
PARTITION BY toYYYYMM(day)
ORDER BY (project, key_id, service, model, day);
{{distributed "spend_daily"}};

CREATE MATERIALIZED VIEW IF NOT EXISTS {{view "spend_daily_mv"}} TO {{to "spend_daily"}} AS
SELECT
    toStartOfDay(event_time) AS day,
    project,
    key_id,
    service,
    model,
    count() AS requests,
    countIf(status_code >= 400) AS errors,
    sum(input_tokens) AS total_input_tokens,
    sum(output_tokens) AS total_output_tokens,
    sum(cost_micros) AS total_cost_micros{{insert_tag}}
FROM {{from "usage_events"}}
GROUP BY day, project, key_id, service, model;

INSERT INTO {{local "spend_daily"}} (day, project, key_id, service, model, requests, errors, total_input_tokens, total_output_tokens, total_cost_micros)
SELECT toStartOfDay(hour), project, key_id, service, model, sum(requests), sum(errors), sum(total_input_tokens), sum(total_output_tokens), sum(total_cost_micros)
FROM {{local "spend_hourly"}}
GROUP BY toStartOfDay(hour), project, key_id, service, model;

-- Requests per key and hour, sorted by time first: the anomaly scan finds the keys that
-- could have a flagged 5-minute bucket (a bucket with at least min_requests lies in an hour
-- with at least as many) in 24 x 10k cells, and reads the 5-minute series of those only.
CREATE TABLE IF NOT EXISTS {{create "usage_key_hourly"}}
(
    hour DateTime('UTC'),
    project String,
    key_id String,
    requests UInt64,
    errors UInt64,
    total_cost_micros Int64{{insert_tag_column}}
)
ENGINE = {{engine "usage_key_hourly" "SummingMergeTree()"}}
PARTITION BY toYYYYMM(hour)
ORDER BY (hour, key_id, project);
{{distributed "usage_key_hourly"}};

CREATE MATERIALIZED VIEW IF NOT EXISTS {{view "usage_key_hourly_mv"}} TO {{to "usage_key_hourly"}} AS
SELECT
    toStartOfHour(event_time) AS hour,
    project,
    key_id,
    count() AS requests,
    countIf(status_code >= 400) AS errors,
    sum(cost_micros) AS total_cost_micros{{insert_tag}}
FROM {{from "usage_events"}}
GROUP BY hour, project, key_id;

INSERT INTO {{local "usage_key_hourly"}} (hour, project, key_id, requests, errors, total_cost_micros)
SELECT hour, project, key_id, sum(requests), sum(errors), sum(total_cost_micros)
FROM {{local "spend_hourly"}}
GROUP BY hour, project, key_id;
