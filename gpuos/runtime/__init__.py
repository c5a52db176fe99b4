"""Running jobs: the per-job supervisor (shim) and the runtime that starts, signals and reaps it."""
