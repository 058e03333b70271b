"""Sinks: change topics applied to a database, exactly once in effect.

`cdc sink postgres` keeps tables of a target database equal to the source's
(`TableApplier`); a service applies the changes it cares about with its own
handler, in its own database, with the same guarantees::

    from cdc.sink import Change, Sink, SinkSettings

    def reserve_stock(db, change: Change) -> None:      # called inside the target transaction
        if change.op == "c":
            db.execute("UPDATE stock SET reserved = reserved + %s WHERE sku = %s",
                       (change.after["qty"], change.after["sku"]))

    settings = SinkSettings(dsn="dbname=inventory", bootstrap_servers="kafka:9092",
                            topics=["shop.public.order_lines"], group="inventory")
    with Sink(settings, reserve_stock) as sink:
        sink.run()                                       # until sink.stop(), or cdc.sink.run for signals

Modules: `settings` (the declarations), `apply` (change -> SQL, pure),
`postgres` (the target: tables, transactions, positions), `runner` (the
consume loop). Importing this package loads none of them until a name is used,
so the CLI can read the settings without loading the database and Kafka clients.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cdc.sink.apply import Change as Change
    from cdc.sink.apply import Shape as Shape
    from cdc.sink.postgres import TableApplier as TableApplier
    from cdc.sink.postgres import Target as Target
    from cdc.sink.runner import Handler as Handler
    from cdc.sink.runner import Sink as Sink
    from cdc.sink.runner import SinkStats as SinkStats
    from cdc.sink.runner import run as run
    from cdc.sink.settings import SinkSettings as SinkSettings

_WHERE = {
    "Change": "cdc.sink.apply",
    "Shape": "cdc.sink.apply",
    "TableApplier": "cdc.sink.postgres",
    "Target": "cdc.sink.postgres",
    "Handler": "cdc.sink.runner",
    "Sink": "cdc.sink.runner",
    "SinkStats": "cdc.sink.runner",
    "run": "cdc.sink.runner",
    "SinkSettings": "cdc.sink.settings",
}

__all__ = ["Change", "Handler", "Shape", "Sink", "SinkSettings", "SinkStats", "TableApplier", "Target", "run"]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'cdc.sink' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
