"""Benchmarks of the asr stack against peers measured in the same run: `python -m bench.run`."""
