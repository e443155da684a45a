-- Per-key model allow-list: a JSON array of model patterns (`provider/model`, a bare model
-- name, `provider/*`); NULL means every model the gateway serves.
ALTER TABLE virtual_keys ADD COLUMN allowed_models TEXT;
