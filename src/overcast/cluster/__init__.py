"""The manager: the services behind the API (users, drives, resources),
placement, hosts, failover.
"""
