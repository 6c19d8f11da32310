"""What the app builder asks Ray for, per service (placement, memory, threads, scaling)."""

from __future__ import annotations

from pathlib import Path

from serve_app import app as app_builder
from serve_app import service_state
from serve_app._local import local_aware_policy
from serve_app.config import load_config

SERVICES = """\
services:
  - LocalInferenceServiceName: jetsonDetector
    ConnectorArn: arn:aws:greengrass:us-west-2::/connectors/ObjectDetectionAarch64JTX2/versions/1
    GPUAcceleration: GPU
    LocalInferenceServiceMemoryLimitKB: "500000"
    model: /models/det
    num_cpus: 2
    num_gpus: 0.5
    placement: {camera-bus: 1}
  - LocalInferenceServiceName: gatewayClassifier
    ConnectorArn: arn:aws:greengrass:us-west-2::/connectors/ImageClassificationx86-64/versions/2
    model: /models/ic
    threads: 3
    autoscaling: {min_replicas: 1, max_replicas: 4, target_ongoing_requests: 2}
"""


def _specs(tmp_path: Path):
    path = tmp_path / "services.yaml"
    path.write_text(SERVICES)
    config = load_config([path])
    return config.service("jetsonDetector"), config.service("gatewayClassifier")


def test_replicas_ask_for_their_platform_gpus_memory_and_threads(tmp_path: Path) -> None:
    jetson, gateway = _specs(tmp_path)
    options = app_builder._actor_options(jetson, None)
    assert options["resources"] == {"connector-platform:Aarch64JTX2": 0.001, "camera-bus": 1}
    assert options["num_gpus"] == 0.5 and options["num_cpus"] == 2
    assert options["memory"] == 500000 * 1024
    assert options["runtime_env"]["env_vars"]["OMP_NUM_THREADS"] == "2"
    assert options["runtime_env"]["env_vars"]["TVM_NUM_THREADS"] == "2"

    options = app_builder._actor_options(gateway, None)
    assert options["resources"] == {"connector-platform:x86-64": 0.001}
    assert "num_gpus" not in options and "memory" not in options
    assert options["runtime_env"]["env_vars"]["MXNET_CPU_WORKER_NTHREADS"] == "3"


def test_a_replica_whose_threads_its_node_sets_for_every_worker_asks_for_no_runtime_env(
        tmp_path: Path) -> None:
    # A box's own Ray starts its workers warm (cluster.ray_start): a replica
    # that needs no environment of its own can take one of them.
    jetson, gateway = _specs(tmp_path)
    assert "runtime_env" not in app_builder._actor_options(jetson, 2)
    assert app_builder._actor_options(gateway, 2)["runtime_env"]["env_vars"][
        "OMP_NUM_THREADS"] == "3"


def test_scaling_is_fixed_or_ray_serve_autoscaling(tmp_path: Path) -> None:
    jetson, gateway = _specs(tmp_path)
    assert app_builder._scaling_options(jetson) == {"num_replicas": 1}
    assert app_builder._scaling_options(gateway) == {"autoscaling_config": {
        "min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 2.0,
        "policy": {"policy_function": local_aware_policy}}}
    assert gateway.autoscaling is not None
    quick = gateway.model_copy(update={"autoscaling": gateway.autoscaling.model_copy(
        update={"upscale_delay_s": 0, "downscale_delay_s": 5})})
    config = app_builder._scaling_options(quick)["autoscaling_config"]
    assert (config["upscale_delay_s"], config["downscale_delay_s"]) == (0, 5)
    assert "look_back_period_s" not in config  # unset: Ray Serve's default


def test_ray_status_messages_lose_their_traceback() -> None:
    message = ("The deployment failed to start 3 times in a row. This may be due to ... "
               "Traceback (most recent call last):\n  File \"x.py\", line 1\n"
               "ModuleNotFoundError: No module named 'x'")
    assert service_state.short_message(message) == (
        "The deployment failed to start 3 times in a row: "
        "ModuleNotFoundError: No module named 'x'")


def _tls_config(tmp_path: Path):
    for name in ("lis.crt", "lis.key"):
        (tmp_path / name).write_text(name)
        (tmp_path / name).chmod(0o600)
    path = tmp_path / "services.yaml"
    path.write_text(SERVICES + "http: {tls: {cert_file: lis.crt, key_file: lis.key}}\n")
    return load_config([path])


def test_on_one_box_the_ingress_gets_the_certificate(tmp_path: Path) -> None:
    config = _tls_config(tmp_path)
    plain = app_builder.build_app(config.model_copy(update={"http": config.http.model_copy(
        update={"tls": None})}), http=("127.0.0.1", 8000))
    app = app_builder.build_app(config, http=("127.0.0.1", 8000))
    ingress = app._bound_deployment
    *_, tls, host_guard = ingress.init_args
    assert tls == config.http.tls and tls.cert_file == tmp_path / "lis.crt"
    assert host_guard is False  # lis's own server checks Host on one box
    # A certificate set or changed replaces the ingress (it is in the version).
    assert ingress.version != plain._bound_deployment.version


def test_on_a_cluster_the_ingress_serves_no_tls_itself(tmp_path: Path) -> None:
    # Ray Serve's proxies hold the certificate there (serve_app.deploy; shown end to end by
    # tests/security/test_attack_plaintext_ingress.py).
    ingress = app_builder.build_app(_tls_config(tmp_path), http=None)._bound_deployment
    *_, tls, _host_guard = ingress.init_args
    assert tls is None


def test_lis_up_shows_an_https_example_when_tls_is_set(tmp_path: Path) -> None:
    from serve_app.cli.up import _example

    config = _tls_config(tmp_path)
    assert _example(config, "127.0.0.1", 8443, None, None).startswith(
        "curl -s -X POST https://127.0.0.1:8443/inference/")
    plain = config.model_copy(update={"http": config.http.model_copy(update={"tls": None})})
    assert _example(plain, "127.0.0.1", 8000, None, None).startswith("curl -s -X POST http://")


def test_local_socket_off_means_no_replica_listens_for_any_caller(tmp_path: Path) -> None:
    # Python callers in lis's Ray take the sockets too (serve_app/_same_node.py):
    # switched off, the replicas serve none, so every caller goes through Ray Serve.
    path = tmp_path / "services.yaml"
    path.write_text(SERVICES + "http: {local_socket: false}\n")
    off = app_builder.build_app(load_config([path]))._bound_deployment
    path.write_text(SERVICES)
    on = app_builder.build_app(load_config([path]))._bound_deployment
    assert off.init_args[5] == {} and on.init_args[5]  # the ingress's own routes
    for name, service in off.init_args[1].items():
        replica = service._bound_deployment
        assert replica.init_args[-1] is False
        assert on.init_args[1][name]._bound_deployment.init_args[-1] is True
        # Switching it replaces the replicas (it is in their version).
        assert replica.version != on.init_args[1][name]._bound_deployment.version


def test_a_pipeline_runs_on_its_cameras_node_and_reserves_no_cpu(tmp_path: Path) -> None:
    from deployments.pipelines.deployment import pipeline_actor_options

    (tmp_path / "in").mkdir()
    path = tmp_path / "services.yaml"
    path.write_text(SERVICES + """\
pipelines:
  - {name: door, service: gatewayClassifier, camera: door-cam,
     source: {type: camera, device: 0}, sinks: [{type: mqtt}]}
  - {name: inbox, service: gatewayClassifier, source: {type: folder, path: in},
     sinks: [{type: mqtt}]}
""")
    config = load_config([path])
    door, inbox = config.pipelines
    assert pipeline_actor_options(door) == {"num_cpus": 0,
                                            "resources": {"camera:door-cam": 0.001}}
    assert pipeline_actor_options(inbox) == {"num_cpus": 0}
    ingress = app_builder.build_app(config)._bound_deployment
    demands = ingress.init_args[4]
    assert demands["pipeline.door"] == {"camera:door-cam": 0.001}
    assert "pipeline.inbox" not in demands
    # No node offers the camera: the pipeline is pending, and says why.
    reason = service_state.unplaceable_reason(demands["pipeline.door"],
                                              [{"CPU": 4.0, "connector-platform:x86-64": 1.0}])
    assert reason == "no node has camera:door-cam: 0.001"
