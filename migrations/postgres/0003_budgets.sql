-- Budgets: one per scope and subject ('global' has subject ''). Limits are per period
-- (month, week or day, UTC); the rate limits are per minute.
CREATE TABLE budgets (
    scope                TEXT NOT NULL,
    subject              TEXT NOT NULL,
    period               TEXT NOT NULL,
    limit_usd            DOUBLE PRECISION,
    limit_tokens         BIGINT,
    requests_per_minute  BIGINT,
    tokens_per_minute    BIGINT,
    on_limit             TEXT NOT NULL,
    updated_at           BIGINT NOT NULL,
    PRIMARY KEY (scope, subject)
);
-- Usage the provider did not report is estimated with a tokenizer and marked so.
ALTER TABLE usage_records ADD COLUMN usage_estimated BOOLEAN NOT NULL DEFAULT FALSE;
CREATE INDEX usage_records_key_at ON usage_records (key_id, at_ms);
