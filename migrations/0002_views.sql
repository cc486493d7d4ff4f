-- depends: 0001_event_store
-- Read models. Each view records the global position it has reached in projection_positions,
-- in the same transaction as its rows.

CREATE TABLE IF NOT EXISTS projection_positions (
    name text PRIMARY KEY,
    position bigint NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS view_availability (
    position_id uuid PRIMARY KEY,
    sku text NOT NULL,
    location text NOT NULL,
    available bigint NOT NULL DEFAULT 0,
    reserved bigint NOT NULL DEFAULT 0,
    committed bigint NOT NULL DEFAULT 0,
    damaged bigint NOT NULL DEFAULT 0,
    returned bigint NOT NULL DEFAULT 0,
    in_transit bigint NOT NULL DEFAULT 0,
    safety_stock bigint NOT NULL DEFAULT 0,
    discrepancy bigint NOT NULL DEFAULT 0,
    version bigint NOT NULL,
    updated_position bigint NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS view_availability_sku_location ON view_availability (sku, location);

CREATE TABLE IF NOT EXISTS view_locations (
    code text PRIMARY KEY,
    name text NOT NULL,
    kind text NOT NULL,
    channels text[] NOT NULL,
    priority integer NOT NULL,
    external_ids jsonb NOT NULL,
    updated_position bigint NOT NULL
);

CREATE TABLE IF NOT EXISTS view_orders (
    order_id uuid PRIMARY KEY,
    channel text NOT NULL,
    external_id text NOT NULL,
    status text NOT NULL,
    paid boolean NOT NULL,
    placed_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL,
    body jsonb NOT NULL,
    state bytea NOT NULL,
    version bigint NOT NULL,
    updated_position bigint NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS view_orders_channel_external ON view_orders (channel, external_id);
CREATE INDEX IF NOT EXISTS view_orders_status_placed ON view_orders (status, placed_at);

CREATE TABLE IF NOT EXISTS view_discrepancies (
    position_id uuid PRIMARY KEY,
    sku text NOT NULL,
    location text NOT NULL,
    shortfall bigint NOT NULL,
    cause text NOT NULL,
    recorded_at timestamptz NOT NULL,
    updated_position bigint NOT NULL
);
