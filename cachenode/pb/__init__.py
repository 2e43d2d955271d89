"""Generated gRPC stubs; regenerate with proto/gen.py."""
