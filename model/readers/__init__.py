"""Dataset readers that register themselves (model.data.register_reader) on import:
`csv` (a user's folder, docs/training.md), `geosound` and `soundingearth` (the PSM datasets as
released), `synthetic` (a generated toy set for smoke runs and tests). The demo corpus registers
its own reader from the composition root (cli/)."""

from model.readers import csv_folder, psm_datasets, synthetic  # noqa: F401  (registration)
