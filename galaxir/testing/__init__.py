"""Helpers for testing galaxir against ONNX's conformance data (used by tests/ and the CLI)."""
