"""Training losses built around MONAI's (deep supervision)."""
