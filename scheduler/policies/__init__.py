"""One policy per file. Each module registers its class with :func:`gpuos.scheduler.register`."""
