-- Fixed-window request counters per client and route.
CREATE TABLE rate_limits (
    bucket        VARCHAR(200) NOT NULL,
    window_start  TIMESTAMP NOT NULL,
    request_count INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (bucket, window_start)
);

-- Requests refused by the limiter; the rate-limit spike alert watches their rate.
CREATE TABLE rate_limit_events (
    id          BIGINT PRIMARY KEY,
    bucket      VARCHAR(200) NOT NULL,
    route       VARCHAR(200) NOT NULL,
    limited_at  TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP
);

CREATE INDEX rate_limit_events_time_idx ON rate_limit_events (limited_at);
