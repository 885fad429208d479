"""The VAREdit Serve HTTP client: installs and imports without torch or the platform."""

from varedit_client.client import ApiError, Client

__all__ = ["ApiError", "Client"]
