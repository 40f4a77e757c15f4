"""Authentication machinery beyond static tokens: JWT bearer tokens against a JWKS (``jwt``), SMART
system scopes (``scopes``), client certificates under mutual TLS (``mtls``), and throttling of
repeated failures (``ratelimit``). ``bridge.auth`` puts them together."""
