"""The demo's own parts: Fashion-MNIST pairs, the LiT teacher, the report. A layer above the engine,
beside ablate; the command that runs the demo is :mod:`clipkd.commands.demo`."""
