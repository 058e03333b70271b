-- inventory: the inventory service's database (captured by the connector "inventory", which
-- routes its outbox messages: --outbox-messages)
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
-- no outbox table: the service emits its events as logical messages (outbox.emit)
