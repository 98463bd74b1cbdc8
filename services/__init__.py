"""synthaug services: each a core library plus a thin gRPC adapter (server.py)."""
