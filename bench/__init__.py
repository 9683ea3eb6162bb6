"""Benchmarks: tunery against the ecosystem's usual tool (TRL SFTTrainer + PEFT) on the same work.

Run with `make bench` (see `python -m bench.run --help`); results go to docs/benchmarks.md.
"""
