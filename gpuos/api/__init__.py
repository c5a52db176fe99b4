"""The gRPC edge: conversion to and from protobuf, caller identity, admission, and the servicers
with the one interface to the daemon they use (``service.DaemonService``)."""
