"""roam relay: a unit that splices transports between clients and servers
without ever holding a session key."""
