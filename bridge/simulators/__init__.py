"""Simulated peers for demos and acceptance tests: a hospital EHR and a municipal care system.

Each is a small real HTTP server on loopback that receives what the bridge delivers (recording,
deduplicating and acknowledging it) and can send messages of its own to the bridge. Run one with
``python -m bridge.simulators hospital|municipality --port P ...``.
"""
