"""Benchmarks of pyvlmx: each module has run(quick, device) -> rows and a CLI."""
