"""`cardo bench <workload> --json`: benchmarks that print one JSON line. Speed targets live here, not in tests."""
