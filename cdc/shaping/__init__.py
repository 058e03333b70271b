"""Shaping what is captured: tables, columns, rows, masks, Python transforms and dead letters.

The user's side is `cdc.shaping.transform` (re-exported here): a transform is
a function of an `Event`; see that module for what it may return and change.

- `select`: ``--tables`` patterns, ``--exclude-tables`` and the per-table
  column and row rules, pure;
- `catalog`: the captured set and the publication's column lists and row
  filters from the catalog, and `TableWatcher` for tables created later;
- `shaper`: the writer's shaping stage (masks, transforms, encoding, dead
  letters); `deadletter`: what a dead letter carries.
"""

from cdc.shaping.transform import Event, Message, Record, Source, Transform, output_columns

__all__ = ["Event", "Message", "Record", "Source", "Transform", "output_columns"]
