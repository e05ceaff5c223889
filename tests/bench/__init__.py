"""Tests of benchmarks/: the figures the scripts print, and that every script still runs."""
