"""What every AWS client of ours shares: where its credentials come from."""

from __future__ import annotations

from pydantic import SecretStr


def client_credentials(
    endpoint_url: str | None, access_key_id: SecretStr | None, secret_access_key: SecretStr | None
) -> dict[str, str]:
    """Explicit keys when set; dummy keys for a local endpoint (which accepts any); nothing
    in AWS, where the pod's IRSA role provides them."""
    if access_key_id and secret_access_key:
        return {
            "aws_access_key_id": access_key_id.get_secret_value(),
            "aws_secret_access_key": secret_access_key.get_secret_value(),
        }
    if endpoint_url:
        return {"aws_access_key_id": "local", "aws_secret_access_key": "local"}
    return {}
