"""Networks and the factory that builds them from the `model` config."""
