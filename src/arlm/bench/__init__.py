"""Side-by-side benchmarks against a reference implementation."""
