"""guard.yaml and the environment: the only package that reads configuration.

- ``document``: the file as written, a typed model (validation and ``mcp-guard schema``);
- ``load``: reading, ``${VAR}`` expansion, the rules across keys, resolution into ``model``;
- ``model``: the frozen configuration the guard runs with;
- ``env``: the environment variables the guard reads besides ``${VAR}``.

Policy files on disk are found by ``mcp_guard.policy.files`` (re-exported here).
"""

from mcp_guard.config.document import CONFIG_KEYS
from mcp_guard.config.env import (
    browser_command,
    check_grant_variable,
    has_browser,
    read_token,
    telemetry_settings,
    upstream_environment,
    upstream_proxied,
)
from mcp_guard.config.load import default_config, load_config, parse_config
from mcp_guard.config.model import (
    CHILD_ENV,
    CHILD_ENV_WINDOWS,
    DEFAULT_AUDIENCE,
    DEFAULT_STARTUP_TIMEOUT,
    DEFAULT_STATE_URL,
    DEFAULT_TIMEOUT,
    ENV_PATTERN,
    EXPOSED_NAME,
    LOOPBACK_HOSTS,
    UPSTREAM_NAME,
    AdminConfig,
    ApprovalPageConfig,
    ApprovalsConfig,
    AuditConfig,
    ClientCredentialsConfig,
    FlowConfig,
    GuardConfig,
    IdentityConfig,
    OAuthConfig,
    OAuthIssuerConfig,
    RootsMode,
    ServeConfig,
    TelemetryConfig,
    TokenExchangeConfig,
    TrustConfig,
    UpstreamAuth,
    UpstreamConfig,
    expand,
    parse_duration,
    resolve_path,
    resolve_state_url,
)
from mcp_guard.policy.files import iter_policy_files, iter_policy_test_files, policy_sources, read_sources

__all__ = [
    "CHILD_ENV", "CHILD_ENV_WINDOWS", "CONFIG_KEYS", "DEFAULT_AUDIENCE", "DEFAULT_STARTUP_TIMEOUT", "DEFAULT_STATE_URL",
    "DEFAULT_TIMEOUT", "ENV_PATTERN", "EXPOSED_NAME", "LOOPBACK_HOSTS", "UPSTREAM_NAME", "AdminConfig", "ApprovalPageConfig",
    "ApprovalsConfig", "AuditConfig", "ClientCredentialsConfig", "FlowConfig", "GuardConfig", "IdentityConfig", "OAuthConfig",
    "OAuthIssuerConfig", "RootsMode", "ServeConfig", "TelemetryConfig", "TokenExchangeConfig", "TrustConfig", "UpstreamAuth",
    "UpstreamConfig", "browser_command", "check_grant_variable", "default_config", "expand", "has_browser", "iter_policy_files",
    "iter_policy_test_files", "load_config", "parse_config", "parse_duration", "policy_sources", "read_sources", "read_token",
    "resolve_path", "resolve_state_url", "telemetry_settings", "upstream_environment", "upstream_proxied",
]
