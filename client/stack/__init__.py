"""A local blockcache stack on loopback: SeaweedFS, etcd, cache nodes and a coordinator."""
