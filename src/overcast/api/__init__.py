"""HTTP: the ElasticHosts routes, auth, content negotiation, error mapping.

Thin: each handler parses, calls a service, renders.
"""
