"""Delivery: claim, send, classify the outcome, decide on a retry, acknowledge."""
