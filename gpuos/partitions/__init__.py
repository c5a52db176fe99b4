"""Partition mechanisms, one module each: time-slicing, MPS, MIG, and memory-limit enforcement.

They sit between the control loop and the device backend: the control loop decides, these
modules turn a decision into what the backend and the processes must do.
"""
