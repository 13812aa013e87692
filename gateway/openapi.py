"""The gateway's OpenAPI document, committed as gateway/openapi.json (a test fails when it drifts).

Regenerate with `make openapi` (`python -m gateway.openapi`).
"""

from __future__ import annotations

import json
import uuid

from .app import OPENAPI_PATH, GatewaySettings, create_app


class _NoVerifier:
    def verify(self, token: str) -> uuid.UUID:  # pragma: no cover - never called when rendering
        raise RuntimeError("rendering only")


def render_openapi() -> str:
    settings = GatewaySettings(addresses={}, expose_affinity_debug=False, verifier=_NoVerifier(), auth_mode="none")
    return json.dumps(create_app(settings).openapi(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def main() -> None:
    OPENAPI_PATH.write_text(render_openapi())
    print(f"wrote {OPENAPI_PATH}")


if __name__ == "__main__":
    main()
