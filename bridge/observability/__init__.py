"""Observability at the edges: structured logs that refuse PHI, and Prometheus metrics without PHI."""
