"""Prometheus metrics: the daemon's health figures at /metrics on a loopback address."""
