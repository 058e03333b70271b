"""Shaping what is captured: tables, columns, rows, masks, Python transforms and dead letters.

- `select`: ``--tables`` patterns, ``--exclude-tables`` and the per-table
  column and row rules, pure;
- `catalog`: the captured set and the publication's column lists and row
  filters from the catalog, and `TableWatcher` for tables created later;
"""
