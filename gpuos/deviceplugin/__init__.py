"""The Kubernetes device plugin: gpuos partitions advertised to the kubelet (device-plugin API
v1beta1), allocated by asking gpuosd for the partition."""
