"""Data: raw records from webdataset shards and CSV (``sources``), image decoding and record -> views (``decode``),
paired views (``views``), the resumable stream (``stream``), held-out pairs, the batch container (``batch``).
Below distill; imports models and the neutral containers only."""
