"""Tests of drivers/: codecs, serial transport, camera, motion gate, outputs, door drivers,
simulators."""
