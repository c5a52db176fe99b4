"""``gpuosctl``: the command-line client."""
