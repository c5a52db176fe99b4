"""Partition mechanisms, one module each: time-slicing, MPS and memory-limit enforcement (MIG's
layout rules are ground floor, in gpuos.mig: the scheduler checks them too).

They sit between the control loop and the device backend: the control loop decides, these
modules turn a decision into what the backend and the processes must do.
"""
