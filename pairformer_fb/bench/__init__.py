"""Benchmarking layer: the structure benchmark, the op / module / block / diffusion benchmarks, kernel tuning, the op fuzzer and their shared timing helpers."""
