-- inventory: the inventory service's database (captured by the connector "inventory")
CREATE TABLE stock (
    sku text PRIMARY KEY,
    on_hand int NOT NULL,
    reserved int NOT NULL DEFAULT 0 CHECK (reserved <= on_hand)
);
CREATE TABLE reservations (
    order_id bigint PRIMARY KEY,
    status text NOT NULL,          -- reserved | out_of_stock
    lines jsonb NOT NULL,
    decided_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE outbox (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    aggregatetype text NOT NULL,
    aggregateid text NOT NULL,
    type text NOT NULL,            -- StockReserved | OutOfStock
    payload jsonb NOT NULL
);
