"""Benchmarks: certbroker's order pipeline against Pebble and the crypto floor (issue 6)."""
