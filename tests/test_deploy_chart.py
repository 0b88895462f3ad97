"""The Helm chart, verified offline: rendered by Helm's own Go library (helm-python-sdk) for a matrix of
values, every manifest validated strictly against a current Kubernetes, the custom resources against
their vendored CRD schemas (tests/crds), and the wiring between objects checked."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import helm_python
import jsonschema
import kubernetes_validate
import pytest
import yaml

CHART = Path(__file__).resolve().parents[1] / "deploy" / "helm" / "triton-inpaint"
CRDS = Path(__file__).resolve().parent / "crds"
KUBERNETES = "1.35"
RELEASE, NAMESPACE = "inpaint", "ml"

MATRIX: dict[str, dict[str, Any]] = {
    "defaults (gpu, pvc, hpa)": {},
    "cpu, no autoscaling": {"triton": {"gpu": {"enabled": False}}, "autoscaling": {"mode": "none"}},
    "keda, s3, service monitor": {
        "autoscaling": {"mode": "keda"},
        "triton": {
            "modelRepository": {"type": "s3", "url": "s3://models/inpaint", "credentialsSecret": "s3-keys"},
            "serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
        },
    },
    "gcs, ingress with tls, gateway autoscaled on a pvc": {
        "triton": {
            "modelRepository": {"type": "gcs", "url": "gs://models/inpaint", "credentialsSecret": "gcs"}
        },
        "gateway": {
            "ingress": {"enabled": True, "className": "nginx", "tlsSecret": "inpaint-tls"},
            "autoscaling": {"enabled": True},
            "storage": {"type": "pvc"},
            "apiKeys": {"existingSecret": "inpaint-keys"},
            "publicUrl": "https://inpaint.example.com",
        },
    },
    "scaled gateway: images in a MinIO bucket, presigned; tasks in PostgreSQL": {
        "gateway": {
            "replicas": 4,
            "objectStore": {
                "url": "s3://inpaint-images/results",
                "endpoint": "https://minio.storage.svc:9000",
                "presignSeconds": 900,
                "credentialsSecret": "minio-keys",
            },
            "database": {"existingSecret": "inpaint-db", "key": "dsn"},
            "apiKeys": {"existingSecret": "inpaint-keys"},
            "workers": 4,
            "taskLeaseSeconds": 20,
        },
    },
    "export job into an existing claim": {
        "triton": {
            "export": {"enabled": True, "registry": '[[models]]\nid = "local:tiny@1"\nname = "tiny"\n'},
            "modelRepository": {"pvc": {"existingClaim": "models"}},
            "memoryBudget": "6GiB",
        },
    },
    "gpu-tensorrt: the export job's runtime, engines built by each pod": {
        "triton": {
            "runtime": "gpu-tensorrt",
            "export": {
                "enabled": True,
                "registry": '[[models]]\nid = "local:tiny@1"\n',
                "args": ["--max-size=1024"],
            },
        },
    },
    "no gateway, no network policy, no disruption budgets": {
        "gateway": {"enabled": False},
        "networkPolicy": {"enabled": False},
        "triton": {"podDisruptionBudget": {"enabled": False}},
    },
}


def _merge(base: dict, extra: dict) -> dict:
    merged = copy.deepcopy(base)
    for key, value in extra.items():
        merged[key] = _merge(merged.get(key, {}), value) if isinstance(value, dict) else value
    return merged


def render(values: dict[str, Any]) -> list[dict[str, Any]]:
    chart = helm_python.Chart.load(CHART)
    try:
        rendered = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    finally:
        chart.close()
    return [doc for text in rendered.values() for doc in yaml.safe_load_all(text) if doc]


def _one(docs: list[dict], kind: str, component: str | None = None) -> dict:
    found = [
        d for d in docs
        if d["kind"] == kind
        and (component is None or d["metadata"]["name"].endswith(f"-{component}"))
    ]  # fmt: skip
    assert len(found) == 1, f"{kind} {component}: {[d['metadata']['name'] for d in found]}"
    return found[0]


def _crd_schema(name: str, version: str) -> dict:
    crd = yaml.safe_load((CRDS / name).read_text())
    (entry,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
    return entry["schema"]["openAPIV3Schema"]


CUSTOM = {
    ("keda.sh/v1alpha1", "ScaledObject"): lambda: _crd_schema("keda.sh_scaledobjects.yaml", "v1alpha1"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"): lambda: _crd_schema(
        "monitoring.coreos.com_servicemonitors.yaml", "v1"
    ),
}


def validate(doc: dict) -> None:
    """Strict validation: a built-in kind against Kubernetes' schema (no schema = a removed or unknown
    API = failure), a custom resource against its CRD."""
    key = (doc["apiVersion"], doc["kind"])
    if key in CUSTOM:
        jsonschema.validate(doc, CUSTOM[key]())
        return
    kubernetes_validate.validate(doc, KUBERNETES, strict=True)


@pytest.mark.parametrize("case", list(MATRIX))
def test_every_manifest_validates(case):
    docs = render(MATRIX[case])
    kinds = sorted({d["kind"] for d in docs})
    print(f"{case}: {len(docs)} objects: {', '.join(kinds)}")
    assert "Deployment" in kinds and "Service" in kinds
    for doc in docs:
        validate(doc)
    for doc in docs:  # the adapter's rules: its config file format, which it reads strictly
        if doc["kind"] == "ConfigMap" and doc["metadata"]["name"].endswith("-adapter-rules"):
            schema = json.loads((CRDS / "prometheus-adapter-config.schema.json").read_text())
            jsonschema.validate(yaml.safe_load(doc["data"]["config.yaml"]), schema)


def test_the_validators_refuse_what_they_should():
    """The checks above can fail: a removed API, a misspelt field, a wrong custom resource."""
    hpa = _one(render({}), "HorizontalPodAutoscaler")
    with pytest.raises(kubernetes_validate.SchemaNotFoundError):
        validate({**hpa, "apiVersion": "autoscaling/v2beta2"})
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(_merge(hpa, {"spec": {"minReplica": 1}}))
    scaled = _one(render({"autoscaling": {"mode": "keda"}}), "ScaledObject")
    with pytest.raises(jsonschema.ValidationError):
        validate(_merge(scaled, {"spec": {"minReplicaCount": "one"}}))


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"autoscaling": {"mode": "v2beta2"}}, "/autoscaling/mode"),
        ({"triton": {"gpu": {"count": 0}}}, "/triton/gpu/count"),
        (
            {"triton": {"modelRepository": {"type": "s3", "url": "https://bucket"}}},
            "/triton/modelRepository/url",
        ),
        (
            {
                "triton": {
                    "export": {"enabled": True, "registry": "x"},
                    "modelRepository": {"type": "s3", "url": "s3://b/m"},
                }
            },
            "/triton/modelRepository/type",
        ),
        ({"gateway": {"replica": 3}}, "replica"),
        ({"triton": {"shm": {"size": "lots"}}}, "/triton/shm/size"),
    ],
)
def test_the_values_schema_refuses_bad_values(values, message):
    with pytest.raises(helm_python.HelmValuesError) as info:
        render(values)
    assert message in str(info.value)


def test_lint_is_clean():
    report = helm_python.lint(CHART, strict=True, kube_version=f"v{KUBERNETES}.0")
    # Severity 1 is information ("icon is recommended"); warnings (2) and errors (3) fail.
    assert not report["errors"] and not [m for m in report["messages"] if m["severity"] >= 2], report


def test_the_hpa_scales_on_the_metrics_the_adapter_rules_produce():
    docs = render({})
    hpa = _one(docs, "HorizontalPodAutoscaler")
    rules = yaml.safe_load(_one(docs, "ConfigMap")["data"]["config.yaml"])["rules"]
    assert [m["type"] for m in hpa["spec"]["metrics"]] == ["Pods", "Pods"]
    assert [m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"]] == [r["name"]["as"] for r in rules]
    for rule in rules:
        series = re.match(r"^(\w+)\{", rule["seriesQuery"]).group(1)
        assert re.fullmatch(rule["name"]["matches"], series) and series in rule["metricsQuery"]
    assert "nv_inference_request_success" in rules[0]["metricsQuery"]
    assert hpa["spec"]["metrics"][1]["pods"]["target"]["averageValue"] == "500m"
    assert hpa["spec"]["scaleTargetRef"]["name"] == _one(docs, "Deployment", "triton")["metadata"]["name"]


def test_keda_queries_the_same_ratio_for_the_triton_service():
    docs = render({"autoscaling": {"mode": "keda"}})
    trigger, inflight = _one(docs, "ScaledObject")["spec"]["triggers"]
    service = _one(docs, "Service", "triton")["metadata"]["name"]
    query = trigger["metadata"]["query"]
    assert f'service="{service}"' in query and f'namespace="{NAMESPACE}"' in query
    assert query.index("nv_inference_queue_duration_us") < query.index("nv_inference_request_success")
    assert trigger["metricType"] == "Value"
    assert inflight["metricType"] == "AverageValue" and inflight["metadata"]["threshold"] == "0.5"
    assert "nv_inference_request_duration_us" in inflight["metadata"]["query"]
    assert not [d for d in docs if d["kind"] == "HorizontalPodAutoscaler"]


@pytest.mark.parametrize("case", list(MATRIX))
def test_services_select_their_pods_and_probes_use_declared_ports(case):
    docs = render(MATRIX[case])
    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    for service in (d for d in docs if d["kind"] == "Service"):
        selector = service["spec"]["selector"]
        targets = [
            d for d in deployments.values()
            if selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()
        ]  # fmt: skip
        assert len(targets) == 1, f"{service['metadata']['name']} selects {len(targets)} deployments"
        ports = {p["name"] for c in targets[0]["spec"]["template"]["spec"]["containers"] for p in c["ports"]}
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= ports
    for deployment in deployments.values():
        spec = deployment["spec"]
        assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
        for container in spec["template"]["spec"]["containers"]:
            names = {p["name"] for p in container["ports"]}
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                if probe in container:
                    assert container[probe]["httpGet"]["port"] in names
            mounts = {m["name"] for m in container.get("volumeMounts", [])}
            assert mounts <= {v["name"] for v in spec["template"]["spec"].get("volumes", [])}


def test_the_network_policy_admits_the_gateway_to_grpc_only():
    docs = render({})
    policy = _one(docs, "NetworkPolicy")
    triton = _one(docs, "Deployment", "triton")["spec"]["template"]
    gateway = _one(docs, "Deployment", "gateway")["spec"]["template"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= triton["metadata"]["labels"].items()
    grpc_rule, metrics_rule = policy["spec"]["ingress"]
    (peer,) = grpc_rule["from"]
    assert peer["podSelector"]["matchLabels"].items() <= gateway["metadata"]["labels"].items()
    assert not peer["podSelector"]["matchLabels"].items() <= triton["metadata"]["labels"].items()
    assert [p["port"] for p in grpc_rule["ports"]] == ["grpc"]
    assert [p["port"] for p in metrics_rule["ports"]] == ["metrics"]
    container_ports = {p["name"] for p in triton["spec"]["containers"][0]["ports"]}
    assert {"grpc", "metrics"} <= container_ports


def test_gateways_spread_requests_over_every_triton_pod_through_the_headless_service():
    docs = render({})
    headless = _one(docs, "Service", "triton-headless")
    triton = _one(docs, "Deployment", "triton")["spec"]["template"]
    gateway = _one(docs, "Deployment", "gateway")["spec"]["template"]
    assert headless["spec"]["clusterIP"] == "None" and not headless["spec"]["publishNotReadyAddresses"]
    assert headless["spec"]["selector"].items() <= triton["metadata"]["labels"].items()
    (port,) = headless["spec"]["ports"]
    assert port["name"] == "grpc" and port["targetPort"] == "grpc"
    name = headless["metadata"]["name"]
    target = f"dns:///{name}.{NAMESPACE}.svc.cluster.local:{port['port']}"
    assert f"--triton={target}" in gateway["spec"]["containers"][0]["args"]
    # Connections age out, so gateways resolve the name again and find pods added since.
    assert "--grpc-max-connection-age=30" in triton["spec"]["containers"][0]["args"]
    other = render({"clusterDomain": "corp.internal", "triton": {"grpcMaxConnectionAgeSeconds": 0}})
    args = _one(other, "Deployment", "gateway")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert f"--triton=dns:///{name}.{NAMESPACE}.svc.corp.internal:{port['port']}" in args
    triton_args = _one(other, "Deployment", "triton")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert not [arg for arg in triton_args if arg.startswith("--grpc-max-connection-age")]


@pytest.mark.parametrize("existing", ["", "ops-triton-admin"])
def test_tritons_admin_apis_need_a_secret_only_the_triton_pods_mount(existing):
    import base64

    docs = render({"triton": {"adminSecret": {"existingSecret": existing}}})
    pod = _one(docs, "Deployment", "triton")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    (flag,) = [arg for arg in container["args"] if arg.startswith("--admin-secret-file=")]
    path = Path(flag.split("=", 1)[1])
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == str(path.parent)]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    name = volume["secret"]["secretName"]
    assert mount["readOnly"] and [item["path"] for item in volume["secret"]["items"]] == [path.name]
    secrets = [d for d in docs if d["kind"] == "Secret"]
    if existing:
        assert name == existing and not secrets  # the operator's own Secret
    else:
        (secret,) = secrets
        assert secret["metadata"]["name"] == name
        assert len(base64.b64decode(secret["data"][path.name])) >= 32
    # The rendered arguments are ones `serve` (the Triton image's entrypoint) takes.
    from triton_inpaint.cli import build_parser

    parsed = build_parser().parse_args(["serve", *container["args"]])
    assert parsed.admin_secret_file == path and parsed.grpc_max_connection_age == 30
    # No other pod mounts it.
    for deployment in (d for d in docs if d["kind"] == "Deployment" and d is not None):
        if deployment["metadata"]["name"].endswith("-gateway"):
            volumes = deployment["spec"]["template"]["spec"].get("volumes", [])
            assert name not in {v.get("secret", {}).get("secretName") for v in volumes}


def test_shm_and_gpu_wiring():
    docs = render({"triton": {"shm": {"size": "8Gi", "pythonDefaultBytes": 33554432}}})
    pod = _one(docs, "Deployment", "triton")["spec"]["template"]["spec"]
    (shm,) = [v for v in pod["volumes"] if v["name"] == "dshm"]
    assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": "8Gi"}
    container = pod["containers"][0]
    assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]
    assert "--triton-arg=--backend-config=python,shm-default-byte-size=33554432" in container["args"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    cpu = render({"triton": {"gpu": {"enabled": False}}})
    container = _one(cpu, "Deployment", "triton")["spec"]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in container["resources"].get("limits", {})


def _export_args(docs: list[dict]) -> list[str]:
    (job,) = [d for d in docs if d["kind"] == "Job"]
    return job["spec"]["template"]["spec"]["containers"][0]["args"]


def test_the_export_job_exports_for_the_runtime_the_pods_serve():
    registry = {"enabled": True, "registry": '[[models]]\nid = "local:tiny@1"\n'}
    gpu = render({"triton": {"export": registry}})
    assert "--runtime=gpu-torch" in _export_args(gpu)  # the default on GPU pods
    assert "--instance-kind=cpu" not in _export_args(gpu)
    assert "initContainers" not in _one(gpu, "Deployment", "triton")["spec"]["template"]["spec"]
    cpu = render({"triton": {"export": registry, "gpu": {"enabled": False}}})
    assert "--runtime=cpu" in _export_args(cpu) and "--instance-kind=cpu" in _export_args(cpu)
    chosen = render(
        {"triton": {"runtime": "gpu-onnxruntime", "export": {**registry, "args": ["--trt-accelerator"]}}}
    )
    assert _export_args(chosen)[-2:] == ["--runtime=gpu-onnxruntime", "--trt-accelerator"]


def test_gpu_tensorrt_pods_build_their_engines_before_serving():
    docs = render(MATRIX["gpu-tensorrt: the export job's runtime, engines built by each pod"])
    assert _export_args(docs)[-2:] == ["--runtime=gpu-tensorrt", "--max-size=1024"]
    spec = _one(docs, "Deployment", "triton")["spec"]["template"]["spec"]
    (init,) = spec["initContainers"]
    assert init["command"] == ["triton-inpaint"] and init["args"][:2] == ["export", "tensorrt"]
    assert init["resources"]["limits"]["nvidia.com/gpu"] == 1  # built on the GPU that will run them
    assert {"name": "models", "mountPath": "/models"} in init["volumeMounts"]  # writable there
    (triton,) = spec["containers"]
    assert {"name": "models", "mountPath": "/models", "readOnly": True} in triton["volumeMounts"]
    (models,) = [v for v in spec["volumes"] if v["name"] == "models"]
    assert "readOnly" not in models["persistentVolumeClaim"]
    # From an object store Triton reads the plans as they are: no init container writes there.
    s3 = render(_merge(MATRIX["keda, s3, service monitor"], {"triton": {"runtime": "gpu-tensorrt"}}))
    assert "initContainers" not in _one(s3, "Deployment", "triton")["spec"]["template"]["spec"]


def test_gpu_pods_size_tritons_cuda_memory_pool_for_every_gpu():
    """GPU tensors between the denoise model and the networks pass through Triton's CUDA pool."""
    args = _one(render({"triton": {"gpu": {"count": 2}}}), "Deployment", "triton")["spec"]["template"]["spec"]
    args = args["containers"][0]["args"]
    pools = [a for a in args if "cuda-memory-pool-byte-size" in a]
    assert pools == [f"--triton-arg=--cuda-memory-pool-byte-size={gpu}:536870912" for gpu in (0, 1)]
    cpu = _one(render({"triton": {"gpu": {"enabled": False}}}), "Deployment", "triton")
    assert not [a for a in cpu["spec"]["template"]["spec"]["containers"][0]["args"] if "cuda-memory" in a]


def test_the_scaled_gateway_reads_its_object_store_and_database_from_values_and_secrets():
    case = MATRIX["scaled gateway: images in a MinIO bucket, presigned; tasks in PostgreSQL"]
    (container,) = _one(render(case), "Deployment", "gateway")["spec"]["template"]["spec"]["containers"]
    assert {
        "--image-store=s3://inpaint-images/results",
        "--s3-endpoint=https://minio.storage.svc:9000",
        "--s3-presign=900",
        "--workers=4",
        "--task-lease=20",
    } <= set(container["args"])
    assert container["envFrom"] == [{"secretRef": {"name": "minio-keys"}}]
    env = {item["name"]: item["valueFrom"]["secretKeyRef"] for item in container["env"]}
    assert env == {
        "TRITON_INPAINT_API_KEYS": {"name": "inpaint-keys", "key": "api-keys"},
        "TRITON_INPAINT_DATABASE_URL": {"name": "inpaint-db", "key": "dsn"},  # never in the args
    }
    assert not [arg for arg in container["args"] if "postgresql" in arg]
    # The rendered arguments are ones the gateway's own parser takes.
    from triton_inpaint.cli import build_parser

    parsed = build_parser().parse_args(["gateway", *container["args"]])
    assert (parsed.workers, parsed.task_lease, parsed.image_store) == (4, 20.0, "s3://inpaint-images/results")
    (plain,) = _one(render({}), "Deployment", "gateway")["spec"]["template"]["spec"]["containers"]
    assert not [arg for arg in plain["args"] if arg.startswith(("--image-store", "--s3-"))]
    assert "envFrom" not in plain and "env" not in plain
