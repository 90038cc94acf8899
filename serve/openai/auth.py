"""Bearer API key (`--api-key` or $NEMO_TRT_API_KEY), compared in constant time.

With no key configured every request is served (the gateway binds 127.0.0.1 by default).
With a key, every /v1 endpoint except the health probes needs `Authorization: Bearer KEY`
(what the openai client sends for `api_key=`). Health probes and /metrics stay open, like
NIM's: Kubernetes probes and Prometheus scrapers carry no key.
"""
from __future__ import annotations

import hmac
import os

ENV_VAR = "NEMO_TRT_API_KEY"


class ApiKeyAuth:
    def __init__(self, key: str | None):
        self._key = key.encode("utf-8") if key else None

    @classmethod
    def from_env(cls, key: str | None = None) -> ApiKeyAuth:
        return cls(key if key is not None else os.environ.get(ENV_VAR) or None)

    @property
    def enabled(self) -> bool:
        return self._key is not None

    def allows(self, authorization: str | None) -> bool:
        if self._key is None:
            return True
        if not authorization:
            return False
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer":
            return False
        # compare_digest takes the same time wherever the first difference is
        return hmac.compare_digest(token.strip().encode("utf-8"), self._key)
