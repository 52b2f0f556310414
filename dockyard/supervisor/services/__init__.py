"""The gRPC services: each module adapts one part of the supervisor to
containerd's v1 API and has ``register(server, supervisor)``."""
