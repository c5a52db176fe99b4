"""The trace-driven discrete-event simulator (see the scheduler issue)."""
