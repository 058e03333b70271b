"""`make bench`: not yet; the benchmark issue builds it."""

import sys

if __name__ == "__main__":
    print("make bench: not yet (the benchmark issue adds it)", file=sys.stderr)
    sys.exit(0)
