"""The Kubernetes DRA driver (``gpuos-dra-plugin``): gpuos partitions published as ResourceSlices,
and ResourceClaims prepared on this node by reserving the partition through gpuosd."""
