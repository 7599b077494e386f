"""The command line (``energyhub``) and the demo's orchestration: the top layer, which may import every part."""
