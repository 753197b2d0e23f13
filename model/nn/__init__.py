"""The torch side of the model: networks, losses and configuration. Needs the `train` extra."""
