"""Jupyter server extension of the VLab workbench."""
