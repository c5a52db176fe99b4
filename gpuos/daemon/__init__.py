"""gpuosd: configuration, the control loop, and the process that wires them together."""
