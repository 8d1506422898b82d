"""The host agent: local guests and storage, supervision, leases, fencing."""
