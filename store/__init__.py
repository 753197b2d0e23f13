"""The embedding store: its on-disk format, the reader the server opens and the writer precompute fills
(docs/store.md). It depends only on runtime/."""
