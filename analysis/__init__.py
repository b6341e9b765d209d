"""Face analysis: detectors composed with the age/gender model (pipeline), the batch loop, inputs and drawing."""
