"""llm-grpc-server: an OpenAI-compatible gRPC server for GGUF models (NumPy reference backend, CUDA kernels)."""

__version__ = "0.1.0"
