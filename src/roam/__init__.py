"""roam: keeps applications' TCP conversations alive while the network under them changes."""

__version__ = "0.1.0"
