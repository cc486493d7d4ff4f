-- depends: 0002_views
-- NATS relays and the exceptions store.

-- How far each relay has published the log. A relay updates its row only after JetStream has
-- acknowledged every message of a batch; the event log itself is the outbox.
CREATE TABLE IF NOT EXISTS relay_positions (
    name text PRIMARY KEY,
    position bigint NOT NULL DEFAULT 0,
    -- messages JetStream acknowledged, in total (duplicates it dropped included)
    published bigint NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Inbound messages and webhooks that could not be applied, kept with their business context for
-- a person to fix and retry. ``key`` dedupes the same failing input arriving again (a redelivery).
CREATE TABLE IF NOT EXISTS exceptions (
    id bigserial PRIMARY KEY,
    channel text NOT NULL,
    source text NOT NULL,
    key text UNIQUE,
    external_ids jsonb NOT NULL DEFAULT '{}'::jsonb,
    reason text NOT NULL,
    payload bytea NOT NULL,
    details jsonb NOT NULL DEFAULT '{}'::jsonb,
    status text NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'resolved')),
    attempts integer NOT NULL DEFAULT 1,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS exceptions_status_id ON exceptions (status, id);
CREATE INDEX IF NOT EXISTS exceptions_channel_id ON exceptions (channel, id);
