"""Simulated devices: the button receiver and terminals on a pty (and `eldergate simulate`'s
control socket), and door-camera videos made from photos. For the demo, the tests and the
benchmarks; the daemon's own path never imports them (tests/test_layering.py)."""
