"""Snapshots: the rows the tables already hold, read so that with the stream they are exact.

One module per job:

- `cdc.snapshot.state`: ``snapshot.json`` (plans, chunks done, the incremental queue);
- `cdc.snapshot.tables`: tables described from the catalog, key chunks, COPY and its text format;
- `cdc.snapshot.workers`: the worker processes that read chunks into Kafka;
- `cdc.snapshot.progress`: progress bars and log lines;
- `cdc.snapshot.initial`: the initial snapshot, run before streaming (`before_streaming`);
- `cdc.snapshot.incremental`: incremental snapshots while streaming (DBLog watermarks).

Requests of ``cdc snapshot`` reach a running connector through `cdc.control`.
"""

from cdc.snapshot.incremental import WATERMARK_PREFIX, IncrementalSnapshots
from cdc.snapshot.initial import Start, before_streaming

__all__ = ["WATERMARK_PREFIX", "IncrementalSnapshots", "Start", "before_streaming"]
