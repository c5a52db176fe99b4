"""The kubelet's plugin registration API (generated code in v1/)."""
