"""Client for the image inference service: `Client` (blocking), `AsyncClient`, the answer
models (`iis_client.schemas`) and the `iis` command (`iis_client.cli`, the `cli` extra)."""

from iis_client.client import ApiError, AsyncClient, Client, ImageSource, RetryPolicy

__all__ = ["ApiError", "AsyncClient", "Client", "ImageSource", "RetryPolicy"]
