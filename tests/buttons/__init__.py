"""Tests of gateway/buttons/: the feature through the daemon, terminal auth, supervision,
crashes."""
