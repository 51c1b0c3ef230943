"""Keep model hubs out of the picture: clipkd's demo and tests never touch the network."""

import os

OFFLINE_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")


def set_offline() -> None:
    """Set the hubs' offline switches (unless the user set them); call before importing hub clients."""
    for var in OFFLINE_VARS:
        os.environ.setdefault(var, "1")
