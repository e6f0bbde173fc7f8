"""Python clients of the stream manager (they import framepipe.protocol only)."""
