"""Tests of gateway/access/: the door controller, the face service, and the daemon end to end."""
