"""Dataset readers: `csv` (a user's folder, docs/training.md), `geosound` and `soundingearth`
(the PSM datasets as released), `synthetic` (a generated toy set for smoke runs and tests). The
table that names them for configs' `data: {kind: ...}` is model.data.READERS."""
