"""Tests of gateway/faces/: enrolment and its gates, the encrypted store, the audit log, bombs."""
