"""Evaluations that run a trained model (long-context passkey retrieval)."""
