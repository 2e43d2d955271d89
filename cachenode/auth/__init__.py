"""Authentication at the node's edge: SigV4 (sigv4, claims), access keys, cluster trust."""
