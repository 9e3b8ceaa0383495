"""`openchat quickstart`: the whole loop on a laptop CPU, from generated data to a graded model."""
