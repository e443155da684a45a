-- `llm-gateway bench`: one row per model and task of a run. Routing reads each model's latest
-- run (its mean score per complexity tier, rows without an error only).
CREATE TABLE bench_results (
    run_id             TEXT NOT NULL,
    at_ms              BIGINT NOT NULL,
    provider           TEXT NOT NULL,
    model              TEXT NOT NULL,
    task               TEXT NOT NULL,
    category           TEXT NOT NULL,
    tier               TEXT NOT NULL,
    score              DOUBLE PRECISION NOT NULL,
    latency_ms         BIGINT NOT NULL,
    ttft_ms            BIGINT,
    prompt_tokens      BIGINT NOT NULL,
    completion_tokens  BIGINT NOT NULL,
    cost_usd           DOUBLE PRECISION,
    error              TEXT,
    PRIMARY KEY (run_id, provider, model, task)
);
CREATE INDEX bench_results_model_at ON bench_results (provider, model, at_ms);
