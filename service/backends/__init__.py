"""Backends: the op vocabulary (base), the NumPy reference and the CUDA (PyCUDA) implementation."""
