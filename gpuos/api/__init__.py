"""The gRPC edge: conversion to and from protobuf, caller identity, and the servicers."""
