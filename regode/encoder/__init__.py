"""The content encoder: a 2D multi-contrast image-to-image translation model (MUNIT family) whose
content features are a learned, modality-independent similarity for registration."""
