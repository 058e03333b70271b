"""Fixtures come from plugins, one per concern (as psycopg's test suite does)."""

pytest_plugins = ("tests.fix_servers", "tests.fix_secure", "tests.fix_warnings")
