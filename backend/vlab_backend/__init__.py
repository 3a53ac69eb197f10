"""VLab backend: API server, store, scheduler, runners, pipeline and measurement harness."""

__version__ = "0.1.0"
# The published dAIEdge-VLab client accepts servers whose API version starts with "1.".
API_VERSION = "1.2.0"
