"""The client library of the supervisor: what the engine uses to run containers.

``oci`` builds runtime specs (config.json) for containers with Docker's
defaults; ``seccomp_default`` holds Docker's default seccomp profile.
"""
