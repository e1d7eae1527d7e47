"""The public gRPC door of carmesh: API keys, per-key rate limits, and raw-bytes routing to healthy upstreams."""
