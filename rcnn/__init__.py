"""Box, anchor and NMS operations for the SSH/ESSH face detector (Cython extensions + NumPy helpers)."""
