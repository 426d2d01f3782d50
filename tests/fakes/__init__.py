"""Fakes of the systems the adapter talks to, serving the same bytes the real ones do."""

from tests.fakes.kube_api import (
    FakeKubeAPI,
    RecordedRequest,
    allow_users,
    auth_config_map_data,
    deny_all,
    status_body,
)

__all__ = ["FakeKubeAPI", "RecordedRequest", "allow_users", "auth_config_map_data", "deny_all", "status_body"]
