"""Shared pytest configuration."""


def pytest_configure(config):
    # the GPU tests (tests/test_cuda_device.py; scripts/gpu_check.sh runs them)
    config.addinivalue_line("markers", "gpu: needs a CUDA device (skipped with the reason without one)")
