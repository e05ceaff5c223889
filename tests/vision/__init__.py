"""Tests of gateway/vision/: the matcher, the decision on real photos, liveness."""
