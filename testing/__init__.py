"""Helpers both the tests and the benchmarks import (signals: test audio made on the spot)."""
