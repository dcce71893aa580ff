"""Where the worker replaces parts of Faust, mode and aiokafka, one module per override.

Each module's header names the upstream code it replaces or copies, the version
it was taken from, and why; tests/unit/test_upstream.py asserts what each one
relies on upstream, so that an upgrade fails in `make test`, not in production.
`versions` holds the tested versions, which the worker checks at start.
docs/upgrading.md lists the overrides and the steps of an upgrade.
"""
