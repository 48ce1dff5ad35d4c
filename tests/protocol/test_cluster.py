"""The shipped cluster YAMLs pass offline validation and our security rules; each rule fails on a mutated copy."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml

from pianoray.config import load_config
from pianoray.protocol.cluster import check_cluster_yaml, fold_placement_warnings, prepare_with_ray, schema_problems

REPO = Path(__file__).resolve().parents[2]
AWS = REPO / "cluster.yaml"
GCP = REPO / "cluster-gcp.yaml"
# Built at run time so no key-shaped literal sits in the repo for secret scanners to trip on.
FAKE_AWS_KEY = "AKIA" + "Q" * 16


def _load(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def _mutated(tmp_path: Path, source: Path, mutate: Callable[[dict[str, Any]], None]) -> Path:
    config = copy.deepcopy(_load(source))
    mutate(config)
    out = tmp_path / source.name
    out.write_text(yaml.safe_dump(config, sort_keys=False))
    return out


def _only(problems: list[str], needle: str) -> list[str]:
    return [p for p in problems if needle in p]


# ------------------------------------------------------------------------------------------ shipped files


@pytest.mark.parametrize("path", [AWS, GCP], ids=["aws", "gcp"])
def test_shipped_yaml_passes_schema_ray_and_security(path: Path) -> None:
    raw = _load(path)
    assert schema_problems(raw) == []
    prepared, problems = prepare_with_ray(raw)
    assert problems == [] and prepared is not None
    # prepare_config filled per-type limits and merged the setup commands, i.e. Ray really processed it.
    assert prepared["available_node_types"]["head"]["max_workers"] == 0
    assert prepared["head_setup_commands"][: len(raw["setup_commands"])] == raw["setup_commands"]
    assert check_cluster_yaml(path) == []


@pytest.mark.parametrize("path", [AWS, GCP], ids=["aws", "gcp"])
def test_shipped_yaml_shape(path: Path) -> None:
    raw = _load(path)
    types = raw["available_node_types"]
    head_start = " ".join(raw["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start and "--dashboard-port=8265" in head_start
    assert types["head"]["resources"].get("GPU", 0) == 0
    spot, ondemand = types["gpu_spot"], types["gpu_ondemand"]
    assert spot["resources"] == ondemand["resources"] == {"CPU": 96, "GPU": 8}
    assert spot["priority"] > ondemand["priority"]
    assert "/home/ubuntu/pianoray/experiments" in raw["file_mounts"]
    assert any("-c " in c and "constraints.txt" in c and "pianoray @ git+" in c for c in raw["setup_commands"])
    if path == AWS:
        assert spot["node_config"]["InstanceType"] == ondemand["node_config"]["InstanceType"] == "p4d.24xlarge"
        assert spot["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot"
        assert "InstanceMarketOptions" not in ondemand["node_config"]
        assert all("IamInstanceProfile" in t["node_config"] for t in types.values())
    else:
        assert spot["node_config"]["machineType"] == ondemand["node_config"]["machineType"] == "a2-highgpu-8g"
        assert spot["node_config"]["scheduling"]["provisioningModel"] == "SPOT"
        assert ondemand["node_config"]["scheduling"]["provisioningModel"] == "STANDARD"
        assert all(t["node_config"]["serviceAccounts"] for t in types.values())


@pytest.mark.parametrize("path", [AWS, GCP], ids=["aws", "gcp"])
def test_placeholders_reported_when_filled_values_required(path: Path) -> None:
    problems = check_cluster_yaml(path, require_filled=True)
    assert problems and all("placeholder" in p and p.startswith(f"{path}: ") for p in problems)
    assert _only(problems, "setup_commands[2]")


# -------------------------------------------------------------------------------- parse / schema / Ray


def test_yaml_parse_error_names_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("cluster_name: x\nprovider:\n  type: aws\n  region: [unclosed\n")
    [problem] = check_cluster_yaml(bad)
    assert problem.startswith(f"{bad}:") and "YAML parse error" in problem


def test_missing_file(tmp_path: Path) -> None:
    [problem] = check_cluster_yaml(tmp_path / "nope.yaml")
    assert problem == f"{tmp_path / 'nope.yaml'}: no such cluster YAML"


def test_schema_error_names_key_path(tmp_path: Path) -> None:
    path = _mutated(tmp_path, AWS, lambda c: c["available_node_types"]["gpu_spot"].update(min_workers="two"))
    problems = check_cluster_yaml(path)
    assert _only(problems, "available_node_types.gpu_spot.min_workers: 'two' is not of type 'integer'")


def test_ray_validate_error_is_phrased(tmp_path: Path) -> None:
    def too_many_min(c: dict[str, Any]) -> None:
        c["available_node_types"]["gpu_spot"]["min_workers"] = 9

    problems = check_cluster_yaml(_mutated(tmp_path, AWS, too_many_min))
    assert _only(problems, "Ray validate_config: ValueError") and _only(problems, "max_workers")


# ---------------------------------------------------------------------------------------- security rules


def test_open_ray_port_in_security_group_rule(tmp_path: Path) -> None:
    rule = {"FromPort": 8265, "ToPort": 8265, "IpProtocol": "tcp", "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}
    path = _mutated(tmp_path, AWS, lambda c: c["provider"].update(security_group={"IpPermissions": [rule]}))
    assert _only(check_cluster_yaml(path), "provider.security_group.IpPermissions[0]: opens Ray port 8265")


def test_ssh_from_anywhere_in_security_group_rule(tmp_path: Path) -> None:
    rule = {"FromPort": 22, "ToPort": 22, "IpProtocol": "tcp", "Ipv6Ranges": [{"CidrIpv6": "::/0"}]}
    path = _mutated(tmp_path, AWS, lambda c: c["provider"].update(security_group={"IpPermissions": [rule]}))
    assert _only(check_cluster_yaml(path), "opens SSH")


@pytest.mark.parametrize(
    "command",
    [
        "aws ec2 authorize-security-group-ingress --group-id sg-1 --protocol tcp --port 6379 --cidr 0.0.0.0/0",
        "gcloud compute firewall-rules create open --allow tcp:10001 --source-ranges 0.0.0.0/0",
        "sudo ufw allow 8265/tcp",
    ],
)
def test_open_ray_port_in_command(tmp_path: Path, command: str) -> None:
    path = _mutated(tmp_path, AWS, lambda c: c["head_setup_commands"].append(command))
    assert _only(check_cluster_yaml(path), "head_setup_commands[1]: opens Ray port")


def test_disabled_auth(tmp_path: Path) -> None:
    def disable(c: dict[str, Any]) -> None:
        c["head_start_ray_commands"][1] = c["head_start_ray_commands"][1].replace(
            "RAY_AUTH_MODE=token", "RAY_AUTH_MODE=disabled"
        )

    problems = check_cluster_yaml(_mutated(tmp_path, AWS, disable))
    assert _only(problems, "head_start_ray_commands[1]: RAY_AUTH_MODE=disabled")
    assert _only(problems, "head_start_ray_commands: `ray start` without RAY_AUTH_MODE=token")


def test_disabled_auth_in_gcp_setup(tmp_path: Path) -> None:
    path = _mutated(tmp_path, GCP, lambda c: c["setup_commands"].append("export RAY_AUTH_MODE='disabled'"))
    assert _only(check_cluster_yaml(path), "RAY_AUTH_MODE=disabled")


def test_embedded_aws_key_in_command_and_comment(tmp_path: Path) -> None:
    path = _mutated(tmp_path, AWS, lambda c: c["setup_commands"].append(f"export AWS_ACCESS_KEY_ID={FAKE_AWS_KEY}"))
    path.write_text(path.read_text() + f"# old key: {FAKE_AWS_KEY}\n")
    problems = check_cluster_yaml(path)
    assert _only(problems, "setup_commands[5]: embedded secret (an AWS access key id)")
    assert _only(problems, "setup_commands[5]: sets AWS credentials in a command")
    last_line = len(path.read_text().splitlines())
    assert _only(problems, f"{path}:{last_line}: embedded secret (an AWS access key id) in a comment")


def test_embedded_private_key_and_gcp_credentials(tmp_path: Path) -> None:
    def embed(c: dict[str, Any]) -> None:
        c["provider"]["gcp_credentials"] = {"type": "service_account", "credentials": "{}"}
        c["setup_commands"].append("echo '-----BEGIN RSA PRIVATE KEY-----' > ~/.ssh/id_rsa")

    problems = check_cluster_yaml(_mutated(tmp_path, GCP, embed))
    assert _only(problems, "provider.gcp_credentials: embeds a service_account credential")
    assert _only(problems, "embedded secret (a private key block)")


def test_worker_without_security_group(tmp_path: Path) -> None:
    path = _mutated(tmp_path, AWS, lambda c: c["available_node_types"]["gpu_ondemand"]["node_config"].pop(
        "SecurityGroupIds"))
    [problem] = check_cluster_yaml(path)
    assert "available_node_types.gpu_ondemand.node_config: worker node type has no SecurityGroupIds" in problem


def test_head_without_security_group(tmp_path: Path) -> None:
    path = _mutated(tmp_path, AWS, lambda c: c["available_node_types"]["head"]["node_config"].pop(
        "SecurityGroupIds"))
    assert _only(check_cluster_yaml(path), "available_node_types.head.node_config: head node type has no")


def test_worker_in_a_different_group_than_head(tmp_path: Path) -> None:
    path = _mutated(tmp_path, AWS, lambda c: c["available_node_types"]["gpu_spot"]["node_config"].update(
        SecurityGroupIds=["sg-other"]))
    assert _only(check_cluster_yaml(path), "gpu_spot.node_config.SecurityGroupIds: shares no group with the head")


def test_gcp_worker_without_tags_or_subnetwork(tmp_path: Path) -> None:
    def strip(c: dict[str, Any]) -> None:
        node_config = c["available_node_types"]["gpu_spot"]["node_config"]
        node_config.pop("tags")
        node_config.pop("networkInterfaces")

    problems = check_cluster_yaml(_mutated(tmp_path, GCP, strip))
    assert _only(problems, "available_node_types.gpu_spot.node_config.tags.items: worker node type has no network")
    assert _only(problems, "available_node_types.gpu_spot.node_config.networkInterfaces: not set")


def test_dashboard_on_all_interfaces(tmp_path: Path) -> None:
    def expose(c: dict[str, Any]) -> None:
        c["head_start_ray_commands"][1] = c["head_start_ray_commands"][1].replace("127.0.0.1", "0.0.0.0")

    [problem] = check_cluster_yaml(_mutated(tmp_path, AWS, expose))
    assert "head_start_ray_commands[1]: --dashboard-host=0.0.0.0 exposes the dashboard" in problem


def test_rays_default_start_commands_are_flagged_as_defaults(tmp_path: Path) -> None:
    """Left out, head_start_ray_commands comes from Ray's defaults.yaml, which binds the dashboard to 0.0.0.0."""
    problems = check_cluster_yaml(_mutated(tmp_path, AWS, lambda c: c.pop("head_start_ray_commands")))
    assert _only(problems, "--dashboard-host=0.0.0.0") and all(
        "Ray's default" in p for p in _only(problems, "head_start_ray_commands")
    )


@pytest.mark.parametrize(
    ("remote", "local"),
    [
        ("/home/ubuntu/.aws/credentials", "~/.aws/credentials"),
        ("/home/ubuntu/.aws", "~/.aws"),
        ("/home/ubuntu/key.json", "~/.config/gcloud/application_default_credentials.json"),
        ("/home/ubuntu/sa.json", "./my-service-account.json"),
    ],
)
def test_credentials_in_file_mounts(tmp_path: Path, remote: str, local: str) -> None:
    path = _mutated(tmp_path, AWS, lambda c: c["file_mounts"].update({remote: local}))
    [problem] = check_cluster_yaml(path)
    assert f"file_mounts.{remote}: copies a credential file" in problem


def test_plain_file_mount_is_fine(tmp_path: Path) -> None:
    path = _mutated(tmp_path, AWS, lambda c: c["file_mounts"].update({"/home/ubuntu/bench": "./benchmarks"}))
    assert check_cluster_yaml(path) == []


# ------------------------------------------------------------------------------------------ fold placement

PROTOCOL = REPO / "experiments" / "protocol.yaml"


def _protocol(tmp_path: Path, workers: int, experiments: dict[str, Any] | None = None) -> Path:
    """The shipped protocol config with ``round2.workers_per_fold`` (and experiment blocks) replaced."""
    config = _load(PROTOCOL)
    config["round2"]["workers_per_fold"] = workers
    for name, block in (experiments or {}).items():
        config["experiments"][name] = block
    out = tmp_path / "protocol.yaml"
    out.write_text(yaml.safe_dump(config, sort_keys=False))
    return out


@pytest.mark.parametrize("path", [AWS, GCP], ids=["aws", "gcp"])
def test_a_fold_job_on_one_whole_node_fits(path: Path) -> None:
    """experiments/protocol-8gpu.yaml: 8 workers x 1 GPU on 8-GPU nodes, no warning."""
    protocol = REPO / "experiments" / "protocol-8gpu.yaml"
    assert load_config(protocol).round2.workers_per_fold == 8
    assert fold_placement_warnings(path, load_config(protocol), str(protocol)) == []


def test_a_fold_job_wider_than_a_node_warns_once_per_gpu_count(tmp_path: Path) -> None:
    """16 workers x 1 GPU > 8; S1 at 2 GPUs a worker makes a second line; the fitted reference (1 job, no
    Train workers) is left out even when it holds a GPU."""
    protocol = _protocol(tmp_path, 16, {"S1": {"resources": {"cpu": 8, "gpu": 2}},
                                        "symbolic-gbm": {"resources": {"cpu": 4, "gpu": 1}}})
    one, two = fold_placement_warnings(AWS, load_config(protocol), "p.yaml")
    assert one.startswith(f"{AWS}: available_node_types: a Round-2 fold job of audio-frozen, symbolic-features, A1,")
    assert "S1" not in one.split("needs")[0] and "symbolic-gbm" not in one + two
    assert "round2.workers_per_fold 16 x 1 GPU = 16 GPUs (p.yaml)" in one
    assert "largest node type (gpu_spot: 8 GPUs)" in one
    assert two.split(" needs")[0].endswith("fold job of S1") and "16 x 2 GPU = 32 GPUs" in two


def test_cluster_check_prints_the_warning_and_exits_0(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from pianoray.cli import app

    runner = CliRunner()
    r = runner.invoke(app, ["cluster", "check", str(AWS), "--config", str(_protocol(tmp_path, 16))])
    assert r.exit_code == 0, r.output
    warnings = [line for line in r.output.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "16 GPUs" in warnings[0], r.output
    assert f"ok: {AWS} (Round-2 fold jobs checked against" in r.output and "1 warning(s)" in r.output
    r = runner.invoke(app, ["cluster", "check", str(AWS)])  # the default: experiments/protocol.yaml
    assert r.exit_code == 0 and "warning:" not in r.output and str(PROTOCOL) in r.output, r.output
    r = runner.invoke(app, ["cluster", "check", str(AWS), "--config", str(tmp_path / "absent.yaml")])
    assert r.exit_code == 2 and "absent.yaml" in r.output and "Traceback" not in r.output, r.output


def test_fold_placement_reads_a_malformed_node_type_as_no_gpus(tmp_path: Path) -> None:
    path = _mutated(tmp_path, AWS, lambda c: c["available_node_types"]["gpu_spot"].update(resources={"GPU": "8"}))
    config = load_config(_protocol(tmp_path, 8))
    assert fold_placement_warnings(path, config, "p.yaml") == []  # gpu_ondemand still has 8
    assert _only(check_cluster_yaml(path), "available_node_types.gpu_spot.resources.GPU")
