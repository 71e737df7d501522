"""Integrations with other systems (optional extras): ``galaxir.integrations.ray``."""
