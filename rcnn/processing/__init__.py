"""NumPy box processing: anchors, box/landmark decoding, clipping and NMS wrappers."""
