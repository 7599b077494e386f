"""M-Bus meter profiles (YAML): a package so that setuptools ships them as package data."""
