"""The ``wsolkit`` command line."""
