"""The `soundscape` command: the composition root that puts model, precompute, server and
corpus commands under one --help. It is the only package that imports all of them."""
