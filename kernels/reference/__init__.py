"""Plain PyTorch references for the built-in kernels, computed in float64 where the tests need it.

One module per kernel family; the Triton kernels in ``gpuos.kernels`` are checked against these.
"""
