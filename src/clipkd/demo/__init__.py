"""Small self-contained demo data sets for trying clipkd end to end."""
