"""Bytecode from OCI registries: references, the distribution API client, bpfman's image format,
cosign signatures, and the agent's fetch with its cache and policy. No Kubernetes imports: the
agent's caller hands in how to read a pull secret."""
