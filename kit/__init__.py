"""Shared plumbing for carmesh daemons: config, logging, gRPC server, health, metrics, lifecycle."""
