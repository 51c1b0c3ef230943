"""The demo's own parts: Fashion-MNIST pairs, the LiT teacher, the report. Orchestrated by
:mod:`clipkd.commands.demo` (above the engine, beside ablate)."""
