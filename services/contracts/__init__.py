"""Contracts shared across process boundaries beside the protos: the turn's frames (orchestrator ↔
gateway) and the API key format. Pure and small; a service or the gateway may import these, never
another service's internals."""
