"""``python -m tests.peers prepare``: fetch the interoperability peers once (``make setup`` runs it).

Apicurio Registry and Debezium (with the compiled oracle) go into the peers
cache, so that the first test run does not spend a minute downloading. Without
Java or Maven it says why and exits 0: the peer tests then skip with the same
reason.
"""

from __future__ import annotations

import sys

from tests.peers.debezium import debezium_install
from tests.peers.jvm import PeerError
from tests.peers.registry import apicurio_home, choose_version


def prepare() -> int:
    for name, fetch in (
        ("Apicurio Registry", lambda: apicurio_home(choose_version()[0])),
        ("Debezium", debezium_install),
    ):
        try:
            where = fetch()
        except PeerError as exc:
            print(f"{name}: not fetched ({exc}); its tests will skip")
            continue
        print(f"{name}: {getattr(where, 'classpath', where)}"[:200])
    return 0


if __name__ == "__main__":
    if sys.argv[1:] != ["prepare"]:
        sys.exit("usage: python -m tests.peers prepare")
    sys.exit(prepare())
