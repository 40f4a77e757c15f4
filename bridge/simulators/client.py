"""How a simulated peer talks to the bridge: authenticated POSTs of FHIR and municipal JSON."""

from __future__ import annotations

from typing import Any

import httpx
import orjson

PROCESS_MESSAGE = "/fhir/$process-message"


class BridgeClient:
    """A blocking httpx client for one system's calls to the bridge (bearer token, loopback base URL)."""

    def __init__(self, base_url: str, token: str | None, *, timeout: float = 10.0) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._client = httpx.Client(base_url=base_url, headers=headers, timeout=timeout)

    def post_fhir(self, message: dict[str, Any]) -> int:
        """POST a MedCom message to ``$process-message``; the HTTP status (0 when the bridge is away)."""
        return self.post(PROCESS_MESSAGE, orjson.dumps(message), "application/fhir+json")

    def post_json(self, path: str, data: Any) -> int:
        """POST municipal JSON to ``path``; the HTTP status (0 when the bridge is away)."""
        return self.post(path, orjson.dumps(data), "application/json")

    def post(self, path: str, body: bytes, content_type: str) -> int:
        """POST ``body``; the HTTP status, or 0 when no answer came (connection refused, timeout)."""
        try:
            response = self._client.post(path, content=body, headers={"Content-Type": content_type})
        except httpx.HTTPError:
            return 0
        return response.status_code

    def close(self) -> None:
        """Close the connection pool."""
        self._client.close()


__all__ = ["PROCESS_MESSAGE", "BridgeClient"]
