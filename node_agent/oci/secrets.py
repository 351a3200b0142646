"""Reading an image pull secret for fetch_image: a kubernetes.io/dockerconfigjson Secret of the
program's namespace, by name, through the agent's REST client (no watch, no list: the agent holds
no Secret longer than one pull)."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Mapping

from bpfleet_api.errors import ApiClientError, ApiError
from bpfleet_api.rest import RestClient
from node_agent.errors import ImagePullFailed

DOCKERCONFIGJSON = "kubernetes.io/dockerconfigjson"


def secret_reader(client: RestClient) -> Callable[[str, str], Mapping[str, bytes] | None]:
    """read_secret(namespace, name) -> the Secret's data, None when it does not exist."""

    def read(namespace: str, name: str) -> Mapping[str, bytes] | None:
        try:
            secret = client.get(f"/api/v1/namespaces/{namespace}/secrets/{name}")
        except ApiError as err:
            if err.status == 404:
                return None
            if err.status == 403:
                raise ImagePullFailed(
                    "this agent may not read image pull secrets (chart value agent.bytecode.pullSecrets)"
                ) from err
            raise ImagePullFailed(f"reading image pull secret {namespace}/{name}: HTTP {err.status}") from err
        except ApiClientError as err:
            raise ImagePullFailed(
                f"reading image pull secret {namespace}/{name}: {type(err).__name__}"
            ) from err
        if secret.get("type") != DOCKERCONFIGJSON:
            raise ImagePullFailed(f"image pull secret {namespace}/{name} is not of type {DOCKERCONFIGJSON}")
        try:
            return {key: base64.b64decode(value) for key, value in (secret.get("data") or {}).items()}
        except (binascii.Error, TypeError, AttributeError) as err:
            raise ImagePullFailed(f"image pull secret {namespace}/{name} has malformed data") from err

    return read
