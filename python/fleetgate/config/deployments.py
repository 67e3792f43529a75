"""Where a model is served (``[deployments]``): one or more named upstreams per model
(OpenAI projects or organisations, Azure OpenAI deployments and regions, provisioned
capacity beside pay-as-you-go), each with its own key, limits, priority and weight. Calls
name the model as before; the gateway chooses the deployment (:mod:`fleetgate.deployments`).

    [[deployments."gpt-4.1-mini"]]
    name = "provisioned"
    base_url = "https://api.openai.com/v1"
    api_key_env = "OPENAI_KEY_PROVISIONED"
    project = "proj_provisioned"
    requests_per_minute = 600
    tokens_per_minute = 600_000
    priority = 0                    # lower first: provisioned capacity before pay-as-you-go

    [[deployments."gpt-4.1-mini"]]
    name = "sweden"
    base_url = "https://my-resource.openai.azure.com"
    api_key_file = "/run/secrets/azure-sweden"
    azure_deployment = "gpt41mini"  # Azure's URL shape: /openai/deployments/{name}/…
    api_version = "2024-10-21"
    requests_per_minute = 300
    priority = 1
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["ModelDeployment"]


class ModelDeployment(BaseModel):
    """One upstream serving a model. Its key comes from the environment
    (``api_key_env``) or a secret file (``api_key_file``), read once at start; with
    neither, the caller's own key is sent. Its limits are its project's (unset: the
    model's ``[models]`` limits); its quota is its own, shared by the fleet."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    #: Names it in metrics, logs and ``x-fleetgate-deployment``: letters, digits, ``._-``.
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    #: OpenAI shape: the API base (``https://api.openai.com/v1``); Azure: the resource's
    #: endpoint (``https://NAME.openai.azure.com``).
    base_url: str = Field(pattern=r"^https?://[^\s]+$")
    api_key_env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    api_key_file: Path | None = None
    #: Sent as ``OpenAI-Organization`` and ``OpenAI-Project``.
    organization: str | None = None
    project: str | None = None
    #: Azure OpenAI: the deployment's name (its URL shape, ``api-key`` header) and the
    #: ``api-version`` every call carries.
    azure_deployment: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    api_version: str | None = None
    requests_per_minute: int | None = Field(default=None, gt=0)
    tokens_per_minute: int | None = Field(default=None, gt=0)
    #: Lower first: a call goes to the first priority with room now, and spills to the
    #: next when every deployment there is out of quota, open or refusing.
    priority: int = Field(default=0, ge=0, le=1000)
    #: Within a priority, deployments share calls by weight times the room they have left.
    weight: float = Field(default=1.0, gt=0, le=1_000_000)

    @model_validator(mode="after")
    def _coherent(self) -> ModelDeployment:
        if self.api_key_env is not None and self.api_key_file is not None:
            raise ValueError(f"deployment {self.name!r}: give api_key_env or api_key_file, not both")
        if (self.azure_deployment is None) != (self.api_version is None):
            raise ValueError(f"deployment {self.name!r}: an Azure deployment needs both azure_deployment and "
                             "api_version (e.g. api_version = \"2024-10-21\")")
        return self
