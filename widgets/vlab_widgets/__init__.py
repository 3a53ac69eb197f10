"""ipywidgets views of the VLab workbench."""
