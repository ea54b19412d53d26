"""NIR: per-pair neural-field registration (fields, samplers, fitting) behind ``regode fit-field``."""
