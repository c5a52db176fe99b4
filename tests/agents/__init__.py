"""Tests of the ADRS loop: evaluator, sandbox, GP engine, search runs."""
