-- shop: the order service's database, captured by the connector "shop" (topic prefix shop).
-- (The shipping read model's database needs no schema: cdc sink postgres creates its tables.)
CREATE TABLE orders (
    id bigserial PRIMARY KEY,
    customer text NOT NULL,
    status text NOT NULL DEFAULT 'placed',
    placed_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE order_lines (
    order_id bigint NOT NULL REFERENCES orders,
    sku text NOT NULL,
    qty int NOT NULL CHECK (qty > 0),
    price numeric(10,2) NOT NULL,
    PRIMARY KEY (order_id, sku)
);
-- the transactional outbox, in the columns of Debezium's EventRouter (cdc start --outbox-table public.outbox);
-- rows are deleted in the transaction that wrote them: the router routes the insert, the table stays empty
CREATE TABLE outbox (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    aggregatetype text NOT NULL,  -- routed to <prefix>.outbox.<aggregatetype>
    aggregateid text NOT NULL,    -- the record key: one aggregate's events stay in order
    type text NOT NULL,           -- OrderPlaced, ...
    payload jsonb NOT NULL
);
