"""The deployment files in cluster/ and the Dockerfiles: valid, and saying what they should."""

from __future__ import annotations

import configparser
import copy
import re
import shlex
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
import yaml

from cluster import node
from cluster.platform import detect_platform
from serve_app.cli import main as lis

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "cluster"
SITE = CLUSTER / "site-example"
FIXTURES = Path(__file__).parent / "fixtures"
# site node -> the captured device it is
SITE_DEVICES = {"gateway": "x86_64", "jetson-1": "jetson-tx2", "jetson-2": "jetson-orin-nano",
                "pi-1": "pi4-64bit", "pi-2": "pi4-64bit"}


def read_env(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines()
             if line.strip() and not line.startswith("#"))
    return {key: value for key, value in pairs}


def unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(CLUSTER / "systemd" / name)
    return parser


# -- the install script, shared by the Makefile and the Dockerfiles ----------

def test_install_script_rejects_an_unknown_level_before_touching_anything(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    result = subprocess.run([str(ROOT / "scripts" / "install.sh"), "bogus"],
                            capture_output=True, text=True, timeout=30,
                            env={"PATH": "/usr/bin:/bin", "VENV": str(venv)})
    assert result.returncode == 2
    assert "usage:" in result.stderr and "runtime|compile|dev" in result.stderr
    assert not venv.exists()


def test_makefile_and_dockerfiles_install_through_the_same_script() -> None:
    makefile = (ROOT / "Makefile").read_text()
    dockerfile = (ROOT / "Dockerfile").read_text()
    jetson = (CLUSTER / "Dockerfile.jetson").read_text()
    assert "scripts/install.sh compile" in makefile
    assert re.search(r"^RUN .*EDITABLE=1 scripts/install\.sh compile$", dockerfile, re.M)
    assert re.search(r"^RUN .*EDITABLE=0 scripts/install\.sh runtime$", jetson, re.M)
    assert not re.search(r"pip3? install", dockerfile + jetson)  # nothing installed beside it


def test_dockerfile_runs_lis_as_a_non_root_user_with_a_health_check() -> None:
    text = (ROOT / "Dockerfile").read_text()
    final_stage = text[text.rindex("\nFROM "):]
    assert re.search(r"^USER lis$", final_stage, re.M)
    assert "lis models build" in text
    assert "http://127.0.0.1:8000/healthz" in final_stage and "HEALTHCHECK" in final_stage
    assert 'ENTRYPOINT ["lis"]' in final_stage
    assert text.startswith("#") and "python:3.11-slim" in text


def test_docker_context_leaves_out_the_host_virtualenv() -> None:
    # install.sh reuses an existing $VENV: a copied host .venv would break the image.
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", ".git", "build"} <= set(ignored)


# -- Ray cluster launcher ------------------------------------------------------

def test_cluster_launcher_yaml_is_valid_for_ray_and_starts_nodes_with_lis() -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((CLUSTER / "ray-cluster-local.yaml").read_text())
    validate_config(prepare_config(copy.deepcopy(config)))
    assert config["provider"]["type"] == "local"
    assert len(config["provider"]["worker_ips"]) == config["max_workers"] == 4
    assert "lis node head" in config["head_start_ray_commands"][-1]
    assert "lis node join --address $RAY_HEAD_IP:6379" in config["worker_start_ray_commands"][-1]
    assert "cluster-token" in str(config["file_mounts"])


# -- systemd ---------------------------------------------------------------------

@pytest.mark.parametrize("name, action", [("lis-node-head.service", "head"),
                                          ("lis-node-worker.service", "join")])
def test_units_restart_the_node_as_a_non_root_user(name: str, action: str) -> None:
    service = unit(name)["Service"]
    command = service["ExecStart"]
    assert f"/bin/lis node {action} --block " in command
    assert "--token-file " in command
    assert service["User"] == "lis" and service["Restart"] in ("always", "on-failure")
    assert unit(name)["Install"]["WantedBy"] == "multi-user.target"


def test_worker_unit_reads_the_token_from_a_credential_not_the_command_line() -> None:
    service = unit("lis-node-worker.service")["Service"]
    assert service["LoadCredential"] == "cluster-token:/etc/lis/cluster-token"
    assert "--token-file ${CREDENTIALS_DIRECTORY}/cluster-token" in service["ExecStart"]


# -- the example site --------------------------------------------------------------

@pytest.mark.parametrize("site_node", sorted(SITE_DEVICES))
def test_site_node_settings_are_valid_lis_node_options(site_node: str, tmp_path: Path,
                                                       capsys) -> None:
    env = read_env(SITE / site_node / "node.env")
    node_args = shlex.split(env["LIS_NODE_ARGS"])
    # The TLS folder exists on the real node only.
    del node_args[node_args.index("--tls-dir"):node_args.index("--tls-dir") + 2]
    address = ["--address", env["LIS_HEAD_ADDRESS"]] if site_node != "gateway" else []
    token = tmp_path / "cluster-token"
    token.write_text("t" * 64)
    token.chmod(0o600)
    device = FIXTURES / SITE_DEVICES[site_node]
    code = lis(["node", "plan", *address, *node_args, "--token-file", str(token),
                "--device-root", str(device), "--machine", (device / "uname-m").read_text().strip()])
    out = capsys.readouterr().out
    assert code == 0
    assert "--node-ip-address=192.168.50." in out


def test_site_services_cover_every_platform_of_the_site() -> None:
    from serve_app.config import load_config

    config = load_config([SITE / "gateway" / "services.yaml"])
    assert {service.platform for service in config.services} == {"x86-64", "Aarch64JTX2", "ARMv7"}
    assert config.http.token_env  # listens on the LAN: clients need a token


# -- certificates for Ray's TLS ----------------------------------------------------

@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")
def test_make_certs_makes_node_certificates_signed_by_the_site_ca(tmp_path: Path) -> None:
    script = str(CLUSTER / "make-certs.sh")
    subprocess.run([script, "-d", str(tmp_path), "gateway=192.168.50.2", "pi-1=192.168.50.21"],
                   check=True, capture_output=True, timeout=60)
    folder = tmp_path / "pi-1"
    assert sorted(p.name for p in folder.iterdir()) == ["ca.crt", "node.crt", "node.key"]
    assert stat.S_IMODE((folder / "node.key").stat().st_mode) == 0o600
    subprocess.run(["openssl", "verify", "-CAfile", str(tmp_path / "ca.crt"),
                    str(folder / "node.crt")], check=True, capture_output=True)
    text = subprocess.run(["openssl", "x509", "-in", str(folder / "node.crt"), "-noout", "-text"],
                          check=True, capture_output=True, text=True).stdout
    assert "IP Address:192.168.50.21" in text and "IP Address:127.0.0.1" in text
    assert "TLS Web Server Authentication, TLS Web Client Authentication" in text
    # The folder is what `lis node --tls-dir` expects.
    options = node.NodeOptions(role="head", tls_dir=folder, token_file=tmp_path / "new-token")
    plan = node.plan_node(options, detect_platform(FIXTURES / "x86_64", "x86_64"))
    assert plan.environment["RAY_TLS_SERVER_CERT"] == str(folder / "node.crt")


def test_make_certs_without_nodes_prints_usage() -> None:
    result = subprocess.run([str(CLUSTER / "make-certs.sh")], capture_output=True, text=True)
    assert result.returncode == 2 and "usage:" in result.stderr
