"""Offline checks of a ``ray up`` cluster YAML: Ray's schema, Ray's own config preparation, and our security rules.

``ray up`` has no dry run, and a mistake in a cluster YAML costs an hour of A100 time or leaves a cluster open to
the internet, so :func:`check_cluster_yaml` finds what it can without a cloud account:

1. the file parses as YAML into a mapping;
2. jsonschema against ``ray/autoscaler/ray-schema.json`` (every error with its key path);
3. Ray's own ``prepare_config`` + ``validate_config`` (``ray.autoscaler._private.util``; private API, hence step 2
   as well). ``prepare_config`` merges the provider's ``defaults.yaml`` into the file *shallowly*: a top-level key
   the file leaves out (say ``head_start_ray_commands``) comes from Ray's defaults, which bind the dashboard to
   0.0.0.0. The security rules therefore run on the prepared config and say when a value is Ray's default.
   Neither function touches the network or needs credentials. What we deliberately do NOT run is the provider's
   bootstrap (``bootstrap_aws`` / ``bootstrap_gcp``): it calls the cloud APIs (IAM, subnets, security groups,
   AMIs), so instance types, AMIs, subnets, groups and service accounts are not checked to exist;
4. security rules (:data:`RAY_PORTS` never open to the internet, dashboard on loopback, token auth on, no
   embedded secrets or credential files, a pre-created security group / firewall tags on every node type).

Each problem is one line: ``<file>: <key path>: <what is wrong>`` (or ``<file>:<line>:`` for text found in
comments). An empty list means the file passed.

:func:`fold_placement_warnings` reads the cluster beside a protocol config: a Round-2 fold job holds
``round2.workers_per_fold`` x ``resources.gpu`` GPUs, and one that needs more than a node has spans nodes, so
DDP's gradient all-reduce leaves NVLink for the network. Ray Train still runs it, hence a warning, not an error.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import yaml

from pianoray.errors import PianorayError
from pianoray.files import read_text

if TYPE_CHECKING:
    from pianoray.config import ProtocolConfig

#: Ray's ports that must never face the internet: GCS (6379), dashboard + job API (8265), Ray Client (10001).
RAY_PORTS: dict[int, str] = {6379: "GCS", 8265: "dashboard", 10001: "Ray Client"}

# Top-level command lists (plus the per-node-type overrides) whose strings are shell run on the nodes.
START_COMMAND_KEYS = ("head_start_ray_commands", "worker_start_ray_commands")

_WORLD = r"(?:0\.0\.0\.0/0|::/0)"
_AWS_ACCESS_KEY = re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b")
_SECRET_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (_AWS_ACCESS_KEY, "an AWS access key id"),
    (re.compile(r"aws_secret_access_key", re.I), "an AWS secret access key"),
    (re.compile(r"aws_session_token", re.I), "an AWS session token"),
    (re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"), "a private key block"),
    (re.compile(r"[\"']?type[\"']?\s*:\s*[\"']service_account[\"']"), "a GCP service-account JSON key"),
    (re.compile(r"[\"']private_key(?:_id)?[\"']\s*:"), "a GCP service-account JSON key"),
)
_AUTH_DISABLED = re.compile(r"RAY_AUTH_MODE\s*[=:]\s*[\"']?disabled", re.I)
_AUTH_TOKEN = re.compile(r"RAY_AUTH_MODE\s*=\s*[\"']?token\b", re.I)
_DASHBOARD_HOST = re.compile(r"--dashboard-host(?:=|\s+)[\"']?(\S+?)[\"']?(?:\s|;|$)")
_RAY_START = re.compile(r"\bray\s+start\b")
_PORT_WORD = re.compile(r"\b(6379|8265|10001)\b")
# Firewall-opening commands: a Ray port next to a world CIDR, or a host firewall rule with no source.
_OPENS_TO_WORLD = re.compile(_WORLD)
_HOST_FIREWALL = re.compile(r"\bufw\s+allow\b|\biptables\b.*-j\s+ACCEPT|\bfirewall-cmd\b.*--add-port")
_DOCKER_PUBLISH = re.compile(r"(?:-p|--publish)[\s=]+(?:(\d+\.\d+\.\d+\.\d+):)?(?:\d+:)?(6379|8265|10001)\b")

# Local files that hold cloud or SSH credentials; none may be copied to the nodes (the nodes use an
# instance role / VM service account instead).
_CREDENTIAL_PATHS = re.compile(
    r"(?:^|/)\.aws(?:/|$)|(?:^|/)\.config/gcloud(?:/|$)|application_default_credentials\.json"
    r"|(?:^|/)\.ssh(?:/|$)|\.pem$|(?:^|/)id_(?:rsa|ecdsa|ed25519)\b|(?:^|/)\.boto$|(?:^|/)\.netrc$"
    r"|(?:^|/)\.docker/config\.json$|(?:^|/)\.kube/config$|service[-_]?account[^/]*\.json$"
    r"|(?:^|/)credentials(?:\.json)?$|(?:^|/)\.ray/auth_token$"
)


def check_cluster_yaml(path: str | Path, *, require_filled: bool = False) -> list[str]:
    """Every problem found in the cluster YAML at ``path``, one line each, naming the file and key path.

    ``require_filled=True`` also reports placeholders left in (``REPLACEME``, ``sg-REPLACEME``, ...): the
    shipped YAMLs pass without it (so CI can check them) and must pass with it before ``ray up``.
    """
    path = Path(path)
    name = str(path)
    try:
        text = read_text(path, "cluster YAML")
    except PianorayError as e:
        return [str(e)]
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        return [f"{name}{where}: YAML parse error: {problem}"]
    if not isinstance(raw, dict):
        return [f"{name}: the top level must be a mapping of cluster keys, got {type(raw).__name__}"]

    problems = [f"{name}: {p}" for p in schema_problems(raw)]
    prepared: dict[str, Any] | None = None
    if not problems:
        prepared, ray_problems = prepare_with_ray(raw)
        problems += [f"{name}: {p}" for p in ray_problems]
    # The file's own values win over the prepared ones so key paths match the file (prepare_config prepends
    # setup_commands to head_setup_commands, shifting indexes); keys the file leaves out come from Ray's defaults.
    config = {**prepared, **raw} if prepared is not None else raw
    problems += [f"{name}: {p}" for p in security_problems(config, raw)]
    problems += [f"{name}:{line}: {p}" for line, p in comment_secrets(text)]
    if require_filled:
        problems += [f"{name}: {p}" for p in placeholder_problems(raw)]
    return problems


# ----------------------------------------------------------------------------------------- Ray's validation


def _key_path(parts: Any) -> str:
    """``["available_node_types", "gpu_spot", "node_config", "SecurityGroupIds", 0]`` -> dotted path with [i]."""
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "(top level)"


def _short(value: Any, limit: int = 80) -> str:
    s = json.dumps(value, default=str) if not isinstance(value, str) else repr(value)
    return s if len(s) <= limit else s[: limit - 3] + "..."


def schema_problems(config: dict[str, Any]) -> list[str]:
    """jsonschema errors of ``config`` against Ray's ``ray-schema.json``, one ``key.path: message`` each."""
    import jsonschema
    import ray.autoscaler

    schema_path = Path(ray.autoscaler.__file__).parent / "ray-schema.json"
    schema = json.loads(schema_path.read_text())
    validator_cls = jsonschema.validators.validator_for(schema)
    errors = sorted(validator_cls(schema).iter_errors(config), key=lambda e: list(map(str, e.absolute_path)))
    out = []
    for e in errors:
        msg = e.message if len(e.message) <= 200 else e.message[:197] + "..."
        out.append(f"{_key_path(e.absolute_path)}: {msg} (ray-schema.json)")
    return out


def prepare_with_ray(config: dict[str, Any]) -> tuple[dict[str, Any] | None, list[str]]:
    """Ray's ``validate_config(prepare_config(config))``: (prepared config or None, problems).

    Both are pure (they read the provider's bundled ``defaults.yaml``); Ray's exceptions become one line.
    """
    import copy

    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    try:
        prepared = prepare_config(copy.deepcopy(config))
    except NotImplementedError as e:  # unknown provider.type
        return None, [f"provider.type: {e}"]
    except Exception as e:  # Ray raises bare ValueError/KeyError/AssertionError here
        return None, [f"Ray prepare_config: {type(e).__name__}: {e}"]
    try:
        validate_config(prepared)
    except jsonschema.ValidationError as e:
        return prepared, [f"{_key_path(e.absolute_path)}: {e.message} (after merging Ray's defaults)"]
    except Exception as e:
        return prepared, [f"Ray validate_config: {type(e).__name__}: {e}"]
    return prepared, []


# ------------------------------------------------------------------------------------------ security rules


def _walk(node: Any, parts: tuple = ()) -> Iterator[tuple[tuple, Any]]:
    """Every (key path, leaf value) in a parsed YAML tree; mapping keys are yielded as leaves too."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield parts + (k,), str(k)
            yield from _walk(v, parts + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _walk(v, parts + (i,))
    elif node is not None:
        yield parts, node


def _origin(parts: tuple, raw: dict[str, Any]) -> str:
    """A suffix saying the value is Ray's default when the file itself does not set that top-level key."""
    return "" if not parts or parts[0] in raw else " (Ray's default: this file does not set it)"


def security_problems(config: dict[str, Any], raw: dict[str, Any]) -> list[str]:
    """Our security rules over a (preferably Ray-prepared) config; ``raw`` tells Ray's defaults from the file's."""
    problems: list[str] = []
    for parts, value in _walk(config):
        if not isinstance(value, str):
            continue
        where = _key_path(parts)
        why = _origin(parts, raw)
        for pattern, what in _SECRET_PATTERNS:
            if pattern.search(value):
                problems.append(f"{where}: embedded secret ({what}); nodes get cloud access from their instance "
                                "role / service account, never from the cluster YAML")
                break
        if re.search(r"AWS_(?:SECRET_ACCESS_KEY|ACCESS_KEY_ID|SESSION_TOKEN)\s*=", value):
            problems.append(f"{where}: sets AWS credentials in a command; use the instance profile instead")
        if _AUTH_DISABLED.search(value) or (parts and parts[-1] == "RAY_AUTH_MODE" and value.lower() == "disabled"):
            problems.append(f"{where}: RAY_AUTH_MODE=disabled turns off Ray's token auth{why}")
        for m in _DASHBOARD_HOST.finditer(value):
            host = m.group(1)
            if host not in ("127.0.0.1", "localhost", "::1", "[::1]"):
                problems.append(f"{where}: --dashboard-host={host} exposes the dashboard (port 8265, job "
                                f"submission = remote code execution); bind it to 127.0.0.1{why}")
        ports = sorted({int(g) for m in _PORT_WORD.finditer(value) for g in m.groups() if g})
        if ports and (_OPENS_TO_WORLD.search(value) or _HOST_FIREWALL.search(value)):
            names = ", ".join(f"{p} ({RAY_PORTS[p]})" for p in ports)
            problems.append(f"{where}: opens Ray port(s) {names} to the network; reach them through "
                            f"`ray dashboard` / SSH instead{why}")
        for m in _DOCKER_PUBLISH.finditer(value):
            if m.group(1) not in ("127.0.0.1",):
                problems.append(f"{where}: publishes Ray port {m.group(2)} on all interfaces{why}")
    problems += _auth_on_problems(config, raw)
    problems += _file_mount_problems(config)
    problems += _gcp_credential_problems(config)
    provider = (config.get("provider") or {}).get("type")
    if provider == "aws":
        problems += _aws_security_group_problems(config)
    elif provider == "gcp":
        problems += _gcp_firewall_problems(config)
    return problems


def _auth_on_problems(config: dict[str, Any], raw: dict[str, Any]) -> list[str]:
    """``ray start`` (unlike a local ``ray.init``) turns token auth on only with RAY_AUTH_MODE=token or an
    existing ~/.ray/auth_token (ray/scripts/scripts.py: maybe_enable_token_auth_if_token_available), so each
    start-command list must say RAY_AUTH_MODE=token explicitly."""
    out = []
    for key in START_COMMAND_KEYS:
        commands = config.get(key) or []
        if not isinstance(commands, list):
            continue
        joined = "\n".join(str(c) for c in commands)
        if _RAY_START.search(joined) and not _AUTH_TOKEN.search(joined):
            out.append(f"{key}: `ray start` without RAY_AUTH_MODE=token runs with token auth OFF unless a "
                       f"token file already exists; prefix it with RAY_AUTH_MODE=token{_origin((key,), raw)}")
    return out


def _file_mount_problems(config: dict[str, Any]) -> list[str]:
    out = []
    mounts = config.get("file_mounts") or {}
    if isinstance(mounts, dict):
        for remote, local in mounts.items():
            for side, p in (("local", local), ("remote", remote)):
                if isinstance(p, str) and _CREDENTIAL_PATHS.search(p.rstrip("/")):
                    out.append(f"file_mounts.{remote}: copies a credential file ({side} path {p!r}) to every "
                               "node; nodes use the instance role / service account instead")
                    break
    for i, p in enumerate(config.get("cluster_synced_files") or []):
        # Ray's own token is the one credential that must reach the workers (from the head, never the laptop).
        if isinstance(p, str) and _CREDENTIAL_PATHS.search(p.rstrip("/")) and not p.endswith(".ray/auth_token"):
            out.append(f"cluster_synced_files[{i}]: syncs a credential file {p!r} to every worker")
    return out


def _gcp_credential_problems(config: dict[str, Any]) -> list[str]:
    creds = (config.get("provider") or {}).get("gcp_credentials")
    if creds:
        kind = creds.get("type", "?") if isinstance(creds, dict) else "?"
        return [f"provider.gcp_credentials: embeds a {kind} credential in the YAML; let `ray up` use your "
                "gcloud login and the nodes their VM service account"]
    return []


def _world_rule_ports(rule: dict[str, Any]) -> list[int]:
    """Ray ports (and SSH) an EC2 IpPermissions rule opens to 0.0.0.0/0 or ::/0."""
    cidrs = [r.get("CidrIp") for r in rule.get("IpRanges") or [] if isinstance(r, dict)]
    cidrs += [r.get("CidrIpv6") for r in rule.get("Ipv6Ranges") or [] if isinstance(r, dict)]
    if not any(c in ("0.0.0.0/0", "::/0") for c in cidrs):
        return []
    if str(rule.get("IpProtocol")) == "-1":
        return [22, *RAY_PORTS]
    lo, hi = rule.get("FromPort", 0), rule.get("ToPort", 65535)
    return [p for p in (22, *RAY_PORTS) if isinstance(lo, int) and isinstance(hi, int) and lo <= p <= hi]


def _aws_security_group_problems(config: dict[str, Any]) -> list[str]:
    out = []
    rules = ((config.get("provider") or {}).get("security_group") or {}).get("IpPermissions") or []
    for i, rule in enumerate(rules):
        if isinstance(rule, dict):
            for port in _world_rule_ports(rule):
                what = "SSH (allow only your CIDR)" if port == 22 else f"Ray port {port} ({RAY_PORTS[port]})"
                out.append(f"provider.security_group.IpPermissions[{i}]: opens {what} to the internet")
    node_types = config.get("available_node_types") or {}
    head = config.get("head_node_type")
    groups: dict[str, set[str]] = {}
    for name, node_type in node_types.items():
        node_config = (node_type or {}).get("node_config") or {}
        ids = set(node_config.get("SecurityGroupIds") or [])
        for nic in node_config.get("NetworkInterfaces") or []:
            ids |= set((nic or {}).get("Groups") or [])
        groups[name] = ids
        if not ids:
            role = "head" if name == head else "worker"
            out.append(f"available_node_types.{name}.node_config: {role} node type has no SecurityGroupIds; Ray "
                       "would create a group allowing SSH from 0.0.0.0/0: name the pre-created group")
    head_groups = groups.get(head, set())
    for name, ids in groups.items():
        if name != head and ids and head_groups and not ids & head_groups:
            out.append(f"available_node_types.{name}.node_config.SecurityGroupIds: shares no group with the head "
                       f"({sorted(head_groups)}), so the intra-group rule does not let the nodes reach each other")
    return out


def _gcp_firewall_problems(config: dict[str, Any]) -> list[str]:
    """On GCP, firewall rules attach to network tags; a node without our tags, or on Ray's auto-picked subnet
    (often the ``default`` network, whose ``default-allow-ssh`` admits 0.0.0.0/0), escapes them."""
    out = []
    node_types = config.get("available_node_types") or {}
    head = config.get("head_node_type")
    tags: dict[str, set[str]] = {}
    for name, node_type in node_types.items():
        node_config = (node_type or {}).get("node_config") or {}
        role = "head" if name == head else "worker"
        items = set(((node_config.get("tags") or {}).get("items")) or [])
        tags[name] = items
        if not items:
            out.append(f"available_node_types.{name}.node_config.tags.items: {role} node type has no network tags, "
                       "so the pre-created firewall rules (SSH from your CIDR only) do not apply to it")
        if not node_config.get("networkInterfaces") and not node_config.get("networkConfig"):
            out.append(f"available_node_types.{name}.node_config.networkInterfaces: not set; Ray would attach the "
                       "project's first subnet (often the default network, which allows SSH from 0.0.0.0/0)")
    head_tags = tags.get(head, set())
    for name, items in tags.items():
        if name != head and items and head_tags - items:
            out.append(f"available_node_types.{name}.node_config.tags.items: lacks the head's tags "
                       f"{sorted(head_tags - items)}, so intra-cluster traffic rules miss it")
    return out


def comment_secrets(text: str) -> list[tuple[int, str]]:
    """Secrets in YAML comments (values are checked through the parsed tree): (line number, message)."""
    out = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        _, hash_, comment = line.partition("#")
        if not hash_:
            continue
        for pattern, what in _SECRET_PATTERNS:
            if pattern.search(comment):
                out.append((lineno, f"embedded secret ({what}) in a comment"))
                break
    return out


def placeholder_problems(raw: dict[str, Any]) -> list[str]:
    """Values the user must fill in before ``ray up`` (anything containing ``REPLACEME``)."""
    return [f"{_key_path(parts)}: placeholder {_short(value)} not filled in"
            for parts, value in _walk(raw) if isinstance(value, str) and "REPLACEME" in value]


# ------------------------------------------------------------------------------------------ fold placement


def fold_placement_warnings(path: str | Path, cfg: ProtocolConfig, config_name: str) -> list[str]:
    """Warnings, one line each, for Round-2 fold jobs of ``cfg`` (the protocol YAML ``config_name``) that need
    more GPUs (``round2.workers_per_fold`` x the experiment's ``resources.gpu``) than the largest node type of
    the cluster YAML at ``path`` advertises. Fitted references run no Train workers and are left out. A file
    that cannot be read or parsed gives none (:func:`check_cluster_yaml` reports it)."""
    from pianoray.models import registry

    try:
        raw = yaml.safe_load(read_text(path, "cluster YAML"))
    except (PianorayError, yaml.YAMLError):
        return []
    node_gpus = _node_gpus(raw)
    workers = cfg.round2.workers_per_fold
    needs: dict[float, list[str]] = {}  # GPUs per fold job -> experiments
    for name in cfg.enabled_experiments():
        gpu = cfg.resources_for(name).gpu
        if gpu > 0 and registry.get(cfg.encoder_name(name)).kind != "fitted":
            needs.setdefault(workers * gpu, []).append(name)
    largest = max(node_gpus, key=node_gpus.__getitem__, default=None)
    most = node_gpus[largest] if largest is not None else 0.0
    out = []
    for job_gpus, names in sorted(needs.items()):
        if job_gpus > most:
            per = job_gpus / workers
            out.append(f"{path}: available_node_types: a Round-2 fold job of {', '.join(names)} needs "
                       f"round2.workers_per_fold {workers} x {per:g} GPU = {job_gpus:g} GPUs ({config_name}), more "
                       f"than the largest node type ({largest or 'none'}: {most:g} GPUs) has; it spans nodes and "
                       f"its gradient all-reduce crosses the network")
    return out


def _node_gpus(raw: Any) -> dict[str, float]:
    """GPUs each node type of a parsed cluster YAML advertises (``resources.GPU``; 0 when absent or not a
    number: the schema check reports malformed values)."""
    types = raw.get("available_node_types") if isinstance(raw, dict) else None
    out = {}
    for name, node_type in (types if isinstance(types, dict) else {}).items():
        resources = node_type.get("resources") if isinstance(node_type, dict) else None
        gpu = resources.get("GPU", 0) if isinstance(resources, dict) else 0
        out[str(name)] = float(gpu) if isinstance(gpu, (int, float)) else 0.0
    return out
