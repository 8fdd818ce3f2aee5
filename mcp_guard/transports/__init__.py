"""Host-facing (downstream) message transports: stdio, and an in-memory pair for tests."""
