"""Data sets for training: RecordIO packs of aligned faces, their preparation and the training iterator."""
