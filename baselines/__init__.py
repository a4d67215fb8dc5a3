"""Baseline recommenders; each module is one model behind the `bench.models` contract."""
