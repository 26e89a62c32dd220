"""Workers beside the lanes: CPU pools for pre- and post-processing."""
