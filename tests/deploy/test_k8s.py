"""The Kubernetes manifests (deploy/k8s): the base and every overlay render with `kubectl kustomize`, every
object validates against the Kubernetes schemas (kubernetes-validate, strict: unknown fields fail) and
every ScaledObject against KEDA's CRD (tests/deploy/data), and the platform's rules hold: one beat,
GPU workers on one GPU each that wait for their warm-up, probes and locked-down containers everywhere,
default-deny networking, autoscaling from zero, Secrets only by reference."""

from __future__ import annotations

import copy
import functools
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
DATA = Path(__file__).resolve().parent / "data"
KUSTOMIZATIONS = ["base"] + sorted(
    str(p.parent.relative_to(K8S)) for p in (K8S / "overlays").glob("*/kustomization.yaml")
)
# The oldest Kubernetes the manifests are meant for (what KEDA 2.16 supports) and the newest whose
# schemas kubernetes-validate carries.
K8S_VERSIONS = ["1.29", kubernetes_validate.latest_version()]
NAMESPACE = "varedit"
SECRETS = {"varedit-db", "varedit-s3", "varedit-webhooks", "varedit-metrics"}
PRIVATE_RANGES = {"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16"}
HEALTHCHECK = ["python", "-m", "worker.healthcheck"]
Obj = dict[str, Any]


def kubectl() -> str:
    path = shutil.which("kubectl")
    if path is None:
        pytest.fail(
            "kubectl is needed to render deploy/k8s (`kubectl kustomize`); install it, e.g. Debian's kubectl"
        )
    return path


@functools.cache
def _render(kustomization: str) -> str:
    out = subprocess.run(
        [kubectl(), "kustomize", str(K8S / kustomization)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, f"kubectl kustomize {kustomization} failed:\n{out.stderr}"
    return out.stdout


def render(kustomization: str) -> list[Obj]:
    return [o for o in yaml.safe_load_all(_render(kustomization)) if o]


def of_kind(objects: list[Obj], kind: str) -> list[Obj]:
    return [o for o in objects if o["kind"] == kind]


def component(obj: Obj) -> str | None:
    return obj["metadata"].get("labels", {}).get("app.kubernetes.io/component")


def pod_spec(obj: Obj) -> Obj:
    return obj["spec"]["template"]["spec"]


def expand(arg: str, env: list[Obj]) -> str:
    """Kubernetes' $(VAR) expansion of a command argument from the container's plain env."""
    values = {e["name"]: e["value"] for e in env if "value" in e}
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: values.get(m[1], m[0]), arg)


def queue_of(container: Obj) -> str | None:
    command = [expand(a, container.get("env", [])) for a in container.get("command", [])]
    if "-Q" not in command:
        return None
    return command[command.index("-Q") + 1]


def gpu_workers(objects: list[Obj]) -> list[Obj]:
    return [d for d in of_kind(objects, "Deployment") if component(d) == "gpu-worker"]


def selects(selector: Obj, labels: dict[str, str]) -> bool:
    """matchLabels and matchExpressions (In, NotIn, Exists, DoesNotExist) against a set of labels."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expr in selector.get("matchExpressions", []):
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        ok = {
            "In": labels.get(key) in values,
            "NotIn": labels.get(key) not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[op]
        if not ok:
            return False
    return True


def config_of(objects: list[Obj], container: Obj) -> dict[str, str]:
    names = [e["configMapRef"]["name"] for e in container.get("envFrom", []) if "configMapRef" in e]
    data: dict[str, str] = {}
    for cm in of_kind(objects, "ConfigMap"):
        if cm["metadata"]["name"] in names:
            data.update(cm["data"])
    return data


# -- schemas --------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_every_object_validates_against_the_kubernetes_schemas(kustomization: str, version: str) -> None:
    objects = [o for o in render(kustomization) if o["apiVersion"] != "keda.sh/v1alpha1"]
    kinds = {o["kind"] for o in objects}
    assert {"Deployment", "Service", "Job", "NetworkPolicy", "PodDisruptionBudget"} <= kinds
    errors = []
    for obj in objects:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            errors.append(
                f"{obj['kind']}/{obj['metadata']['name']}: {'.'.join(map(str, e.path))}: {e.message}"
            )
    assert errors == []


def test_the_kubernetes_validation_is_strict() -> None:
    """A misspelt field fails, so a pass above means the fields exist where they are written."""
    api = next(d for d in of_kind(render("base"), "Deployment") if component(d) == "api")
    bad = copy.deepcopy(api)
    bad["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSIONS[0], strict=True)


def _strict(schema: Obj) -> Obj:
    """An openAPIV3Schema as the API server applies it with strict field validation: an object schema
    with properties refuses fields it does not name (unless it preserves unknown fields)."""
    schema = dict(schema)
    if "properties" in schema:
        schema["properties"] = {k: _strict(v) for k, v in schema["properties"].items()}
        if "additionalProperties" not in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
            schema["additionalProperties"] = False
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            schema[key] = _strict(schema[key])
    return schema


@functools.cache
def keda_crd() -> Obj:
    return yaml.safe_load((DATA / "keda-scaledobject-crd.yaml").read_text())


def scaledobject_validator() -> jsonschema.Validator:
    version = next(v for v in keda_crd()["spec"]["versions"] if v["name"] == "v1alpha1")
    assert version["served"] and version["storage"]
    return jsonschema.Draft7Validator(_strict(version["schema"]["openAPIV3Schema"]))


def test_the_vendored_crd_is_keda_scaledobject_v1alpha1() -> None:
    crd = keda_crd()
    assert crd["kind"] == "CustomResourceDefinition" and crd["metadata"]["name"] == "scaledobjects.keda.sh"
    assert crd["spec"]["group"] == "keda.sh" and crd["spec"]["names"]["kind"] == "ScaledObject"
    spec = next(v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1")["schema"]["openAPIV3Schema"]
    assert spec["properties"]["spec"]["required"] == ["scaleTargetRef", "triggers"]
    jsonschema.Draft7Validator.check_schema(spec)


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_scaledobjects_validate_against_the_keda_crd(kustomization: str) -> None:
    crd, validator = keda_crd(), scaledobject_validator()
    scaled = of_kind(render(kustomization), "ScaledObject")
    assert scaled
    for so in scaled:
        assert so["apiVersion"] == f"{crd['spec']['group']}/v1alpha1"
        errors = [f"{'.'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(so)]
        assert errors == [], so["metadata"]["name"]


def test_the_keda_validation_catches_mistakes() -> None:
    so = of_kind(render("base"), "ScaledObject")[0]
    validator = scaledobject_validator()
    for mistake in (
        lambda s: s["spec"].update(minReplicas=0),  # not a ScaledObject field
        lambda s: s["spec"].update(maxReplicaCount="8"),  # a string where an int32 belongs
        lambda s: s["spec"]["triggers"][0].pop("type"),  # required
        lambda s: s["spec"]["triggers"][0]["metadata"].update(threshold=2),  # metadata values are strings
    ):
        bad = copy.deepcopy(so)
        mistake(bad)
        assert not validator.is_valid(bad)


# -- the platform's rules -------------------------------------------------------------------------


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_exactly_one_beat_that_never_overlaps(kustomization: str) -> None:
    objects = render(kustomization)
    beats = [
        d
        for d in of_kind(objects, "Deployment")
        if any("beat" in c.get("command", []) for c in pod_spec(d)["containers"])
    ]
    assert len(beats) == 1
    assert beats[0]["spec"]["replicas"] == 1
    assert beats[0]["spec"]["strategy"] == {"type": "Recreate"}
    assert not any(
        "-B" in c.get("command", []) or "--beat" in c.get("command", [])
        for d in of_kind(objects, "Deployment")
        for c in pod_spec(d)["containers"]
    ), "a worker with an embedded beat would be a second one"
    # The one beat is the one exporter of the job gauges, and Prometheus is told where.
    (container,) = pod_spec(beats[0])["containers"]
    port = {e["name"]: e.get("value") for e in container["env"]}["VAREDIT_JOB_METRICS_PORT"]
    annotations = beats[0]["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == port and annotations["prometheus.io/scrape"] == "true"


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_gpu_workers_hold_one_gpu_and_wait_for_their_warm_up(kustomization: str) -> None:
    objects = render(kustomization)
    workers = gpu_workers(objects)
    assert workers
    for d in workers:
        spec = pod_spec(d)
        (worker,) = spec["containers"]
        resources = worker["resources"]
        assert str(resources["requests"]["nvidia.com/gpu"]) == "1"
        assert str(resources["limits"]["nvidia.com/gpu"]) == "1"
        assert worker["startupProbe"]["exec"]["command"] == HEALTHCHECK
        assert worker["startupProbe"]["failureThreshold"] * worker["startupProbe"]["periodSeconds"] >= 600
        assert "replicas" not in d["spec"], "KEDA owns the count"
        # Drains the running edit (Celery's warm shutdown) within the grace period.
        assert spec["terminationGracePeriodSeconds"] >= 120
        assert spec["nodeSelector"] and spec["tolerations"]
        # Weights read-only from a claim, at /models, where VAREDIT_MODEL_PATH points.
        mount = next(m for m in worker["volumeMounts"] if m["mountPath"] == "/models")
        assert mount["readOnly"] is True
        volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
        claim = volume["persistentVolumeClaim"]["claimName"]
        assert claim in {p["metadata"]["name"] for p in of_kind(objects, "PersistentVolumeClaim")}
        env = {e["name"]: e.get("value") for e in worker["env"]}
        assert env["VAREDIT_MODEL_PATH"].startswith("/models/")
        # Its queue, its label and the served models agree.
        model = d["metadata"]["labels"]["varedit.io/model"]
        assert queue_of(worker) == f"edits.{model}"
        assert spec["containers"][0]["command"][:4] == ["celery", "-A", "worker.celery_app", "worker"]
        assert {"-c", "1"} <= set(worker["command"]) and "--prefetch-multiplier" in worker["command"]
        assert model in json.loads(config_of(objects, worker)["VAREDIT_MODELS"])
        assert d["spec"]["template"]["metadata"]["labels"]["varedit.io/model"] == model
        assert d["spec"]["selector"]["matchLabels"]["varedit.io/model"] == model


# After the drain grace a worker still hands its edit back at the next scale, delivers a result already
# generated (an upload, up to 10 s of preview flush) and exits: the pod's grace period must cover that too.
DRAIN_MARGIN_S = 20


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_every_worker_drains_within_its_grace_period(kustomization: str) -> None:
    """terminationGracePeriodSeconds > the worker's VAREDIT_DRAIN_GRACE_S + margin: a worker told to
    stop is never killed while it may still hand its job back (worker/drain.py). Each worker states its
    drain grace next to its grace period, not through the shared ConfigMap."""
    objects = render(kustomization)
    workers = [
        d
        for d in of_kind(objects, "Deployment")
        if any(c.get("command", [])[:4] == ["celery", "-A", "worker.celery_app", "worker"] for c in
               pod_spec(d)["containers"])
    ]  # fmt: skip
    assert {component(d) for d in workers} == {"gpu-worker", "light-worker"}
    for d in workers:
        (container,) = pod_spec(d)["containers"]
        env = {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}
        drain_s = float(env["VAREDIT_DRAIN_GRACE_S"])
        assert drain_s > 0
        assert pod_spec(d)["terminationGracePeriodSeconds"] > drain_s + DRAIN_MARGIN_S, d["metadata"]["name"]
        assert "VAREDIT_DRAIN_GRACE_S" not in config_of(objects, container)


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_every_served_model_has_gpu_workers(kustomization: str) -> None:
    objects = render(kustomization)
    (cm,) = of_kind(objects, "ConfigMap")
    served = json.loads(cm["data"]["VAREDIT_MODELS"])
    assert sorted(d["metadata"]["labels"]["varedit.io/model"] for d in gpu_workers(objects)) == sorted(served)


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_the_config_is_one_the_platform_accepts_in_production(
    kustomization: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ConfigMap plus the Secrets' variables pass the platform's own settings checks, and every
    model's jobs are accepted while its workers are at zero (a complete override)."""
    from jobs.settings import Settings

    (cm,) = of_kind(render(kustomization), "ConfigMap")
    for key, value in cm["data"].items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("VAREDIT_DATABASE_URL", "postgresql+psycopg://varedit:pw@postgresql:5432/varedit")
    monkeypatch.setenv("VAREDIT_METRICS_TOKEN", "token")
    settings = Settings(_env_file=None)
    assert settings.environment == "production" and settings.auth == "api_key"
    assert settings.storage_url.startswith("s3://")
    for model in settings.models:
        assert settings.model_overrides[model].complete, model


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_every_workload_has_probes_resources_and_a_locked_down_container(kustomization: str) -> None:
    objects = render(kustomization)
    for obj in of_kind(objects, "Deployment") + of_kind(objects, "Job"):
        name = f"{obj['kind']}/{obj['metadata']['name']}"
        spec = pod_spec(obj)
        assert spec["automountServiceAccountToken"] is False, name
        pod_sc = spec["securityContext"]
        assert pod_sc["runAsNonRoot"] is True and pod_sc["runAsUser"] != 0, name
        assert pod_sc["seccompProfile"]["type"] == "RuntimeDefault", name
        for c in spec["containers"]:
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, name
            assert sc["readOnlyRootFilesystem"] is True, name
            assert sc.get("privileged", False) is False, name
            assert sc["capabilities"]["drop"] == ["ALL"], name
            assert {"cpu", "memory"} <= set(c["resources"]["requests"]), name
            assert "memory" in c["resources"]["limits"], name
            if obj["kind"] == "Deployment":
                assert "livenessProbe" in c and "readinessProbe" in c, name
            assert ":" in c["image"], f"{name}: an image without a tag"
            assert c["imagePullPolicy"] == "IfNotPresent", name


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_the_api_is_probed_autoscaled_and_keeps_a_replica_through_disruptions(kustomization: str) -> None:
    objects = render(kustomization)
    (api,) = [d for d in of_kind(objects, "Deployment") if component(d) == "api"]
    (c,) = pod_spec(api)["containers"]
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    (hpa,) = of_kind(objects, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == api["metadata"]["name"]
    assert hpa["spec"]["minReplicas"] >= 2
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]
    (svc,) = of_kind(objects, "Service")
    assert selects({"matchLabels": svc["spec"]["selector"]}, api["spec"]["template"]["metadata"]["labels"])


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_the_api_and_every_gpu_worker_have_a_disruption_budget(kustomization: str) -> None:
    objects = render(kustomization)
    budgets = of_kind(objects, "PodDisruptionBudget")
    for d in of_kind(objects, "Deployment"):
        if component(d) not in {"api", "gpu-worker"}:
            continue
        labels = d["spec"]["template"]["metadata"]["labels"]
        mine = [b for b in budgets if selects(b["spec"]["selector"], labels)]
        assert len(mine) == 1, d["metadata"]["name"]
        # A budget selects one Deployment's pods only.
        others = [o for o in of_kind(objects, "Deployment") if o is not d]
        assert not any(
            selects(mine[0]["spec"]["selector"], o["spec"]["template"]["metadata"]["labels"]) for o in others
        )


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_networking_is_denied_by_default_and_opened_per_need(kustomization: str) -> None:
    objects = render(kustomization)
    policies = of_kind(objects, "NetworkPolicy")
    deny = [
        p
        for p in policies
        if p["spec"]["podSelector"] == {}
        and set(p["spec"]["policyTypes"]) == {"Ingress", "Egress"}
        and not p["spec"].get("ingress")
        and not p["spec"].get("egress")
    ]
    assert len(deny) == 1

    def egress_ports(comp: str) -> set[int]:
        labels = {"app.kubernetes.io/instance": "varedit", "app.kubernetes.io/component": comp}
        return {
            port["port"]
            for p in policies
            if selects(p["spec"]["podSelector"], labels)
            for rule in p["spec"].get("egress", [])
            for port in rule.get("ports", [])
        }

    assert egress_ports("gpu-worker") == {53, 5432, 6379, 9000, 443}
    assert egress_ports("migrate") == {53, 5432}
    assert egress_ports("beat") == {53, 5432, 6379}  # its gauges read the database
    assert {80, 443, 5432, 6379, 9000} <= egress_ports("light-worker")
    # The internet, for webhooks, only outside the private and link-local ranges, and never for a
    # GPU worker.
    internet = [
        (p, rule)
        for p in policies
        for rule in p["spec"].get("egress", [])
        for peer in rule.get("to", [])
        if peer.get("ipBlock", {}).get("cidr") == "0.0.0.0/0"
    ]
    assert internet
    for p, rule in internet:
        (peer,) = rule["to"]
        assert set(peer["ipBlock"]["except"]) >= PRIVATE_RANGES
        assert {port["port"] for port in rule["ports"]} == {80, 443}
        light = {"app.kubernetes.io/instance": "varedit", "app.kubernetes.io/component": "light-worker"}
        gpu = {"app.kubernetes.io/instance": "varedit", "app.kubernetes.io/component": "gpu-worker"}
        assert selects(p["spec"]["podSelector"], light) and not selects(p["spec"]["podSelector"], gpu)
    # The API takes connections from anywhere on 8000.
    api = {"app.kubernetes.io/instance": "varedit", "app.kubernetes.io/component": "api"}
    assert any(
        selects(p["spec"]["podSelector"], api)
        and rule.get("from") is None
        and rule["ports"][0]["port"] == 8000
        for p in policies
        for rule in p["spec"].get("ingress", [])
    )


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_every_gpu_worker_scales_from_zero_on_its_own_queue(kustomization: str) -> None:
    objects = render(kustomization)
    deployments = {d["metadata"]["name"]: d for d in of_kind(objects, "Deployment")}
    scaled = of_kind(objects, "ScaledObject")
    targets = [so["spec"]["scaleTargetRef"]["name"] for so in scaled]
    assert sorted(targets) == sorted(d["metadata"]["name"] for d in gpu_workers(objects))
    for so in scaled:
        spec = so["spec"]
        assert spec["scaleTargetRef"].get("kind", "Deployment") == "Deployment"
        target = deployments[spec["scaleTargetRef"]["name"]]
        assert spec["minReplicaCount"] == 0
        assert spec["maxReplicaCount"] >= 1
        # A worker warms up for minutes: it is not dropped after a quiet minute or two.
        assert spec["cooldownPeriod"] >= 300
        model = target["metadata"]["labels"]["varedit.io/model"]
        queries = [t["metadata"]["query"] for t in spec["triggers"]]
        assert all(t["type"] == "prometheus" for t in spec["triggers"])
        assert any("varedit_queue_depth" in q for q in queries)
        assert any("varedit_queue_oldest_age_seconds" in q for q in queries)
        for q in queries:
            assert set(re.findall(r'model="([^"]*)"', q)) == {model}, q
            assert "max(" not in q, "beat alone exports the gauges: a sum counts each job once"
            assert "sum(" in q
        assert all(t["metadata"]["ignoreNullValues"] == "false" for t in spec["triggers"])


def trigger_value(query: str, gauges: dict[tuple[str, str], float]) -> float:
    """A scaling query evaluated on beat's gauges: the queries are sums of `sum(NAME{LABELS})` terms,
    and `gauges` maps (name, status or "") to the model's value."""
    assert re.fullmatch(r"sum\([^)]*\)( \+ sum\([^)]*\))*", query), query
    total = 0.0
    for name, labels in re.findall(r"sum\((varedit_[a-z_]+)\{([^}]*)\}\)", query):
        status = dict(re.findall(r'(\w+)="([^"]*)"', labels)).get("status", "")
        total += gauges[(name, status)]
    return total


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_a_model_in_use_stays_active_and_a_fresh_lone_job_wakes_none(kustomization: str) -> None:
    """KEDA's activation (value > activationThreshold on any trigger) decides both ways: from 0 to 1,
    and back to 0 after cooldownPeriod without an active trigger. A worker running one job at a time
    (nothing queued), or one whose last short job ended between two polls, must count as active, or a
    steady trickle from one client loses its warm worker every cooldownPeriod; a lone job just accepted
    wakes nothing (it may be canceled at once) until it has waited; nothing open and nothing run lately
    is inactive. No trigger asks for more workers than ceil(open jobs / 2), or one when none is open."""

    def state(
        queued: int, running: int, oldest_age_s: float, ran_lately: int = 0
    ) -> dict[tuple[str, str], float]:
        return {
            ("varedit_queue_depth", ""): queued,
            ("varedit_jobs", "queued"): queued,
            ("varedit_jobs", "running"): running,
            ("varedit_queue_oldest_age_seconds", ""): oldest_age_s,
            ("varedit_jobs_ended_recently", ""): ran_lately,
        }

    def active(so: Obj, gauges: dict[tuple[str, str], float]) -> bool:
        return any(
            trigger_value(t["metadata"]["query"], gauges) > float(t["metadata"]["activationThreshold"])
            for t in so["spec"]["triggers"]
        )

    scaled = of_kind(render(kustomization), "ScaledObject")
    assert scaled
    for so in scaled:
        name = so["metadata"]["name"]
        assert active(so, state(queued=0, running=1, oldest_age_s=0)), f"{name}: a busy worker reads as idle"
        assert active(so, state(queued=1, running=1, oldest_age_s=1)), name
        assert not active(so, state(queued=1, running=0, oldest_age_s=1)), name
        assert active(so, state(queued=1, running=0, oldest_age_s=6)), name
        assert active(so, state(queued=0, running=0, oldest_age_s=0, ran_lately=1)), f"{name}: used lately"
        assert not active(so, state(queued=0, running=0, oldest_age_s=0)), name
        for queued, running, ran_lately in [
            (0, 1, 0),
            (0, 4, 0),
            (3, 0, 0),
            (5, 3, 0),
            (0, 0, 50),
            (1, 1, 50),
        ]:
            gauges = state(queued, running, oldest_age_s=1, ran_lately=ran_lately)
            for t in so["spec"]["triggers"]:
                if "varedit_queue_oldest_age_seconds" in t["metadata"]["query"]:
                    continue  # the wait backstop: a worker per 5 min of waiting, not per job
                want = -(-trigger_value(t["metadata"]["query"], gauges) // float(t["metadata"]["threshold"]))
                assert want <= max(1, -(-(queued + running) // 2)), (name, t["name"])


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_secrets_are_referenced_never_rendered(kustomization: str) -> None:
    objects = render(kustomization)
    assert of_kind(objects, "Secret") == []
    example = {
        s["metadata"]["name"]: s for s in yaml.safe_load_all((K8S / "secrets.example.yaml").read_text())
    }
    assert set(example) == SECRETS
    referenced = set()
    for obj in of_kind(objects, "Deployment") + of_kind(objects, "Job"):
        for c in pod_spec(obj)["containers"]:
            assert not any("secretRef" in e for e in c.get("envFrom", [])), "name each key"
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["key"] in example[ref["name"]]["stringData"], (ref, obj["metadata"]["name"])
                    referenced.add(ref["name"])
    assert referenced == SECRETS
    # The example is the shape only: no kustomization lists it or generates a Secret.
    for k in K8S.rglob("kustomization.yaml"):
        kustomization_file = yaml.safe_load(k.read_text())
        listed = kustomization_file.get("resources", []) + kustomization_file.get("components", [])
        assert not any("secrets.example" in r for r in listed), k
        assert "secretGenerator" not in kustomization_file, k


def test_the_secrets_example_is_valid_kubernetes() -> None:
    for obj in yaml.safe_load_all((K8S / "secrets.example.yaml").read_text()):
        kubernetes_validate.validate(obj, K8S_VERSIONS[0], strict=True)


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_every_reference_resolves_within_the_namespace(kustomization: str) -> None:
    objects = render(kustomization)
    for obj in objects:
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == NAMESPACE, obj["metadata"]["name"]
    config_maps = {cm["metadata"]["name"] for cm in of_kind(objects, "ConfigMap")}
    for obj in of_kind(objects, "Deployment") + of_kind(objects, "Job"):
        for c in pod_spec(obj)["containers"]:
            refs = [e["configMapRef"]["name"] for e in c.get("envFrom", []) if "configMapRef" in e]
            assert refs and set(refs) <= config_maps, obj["metadata"]["name"]
        d_labels = obj["spec"]["template"]["metadata"]["labels"]
        if obj["kind"] == "Deployment":
            assert selects(obj["spec"]["selector"], d_labels)


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_the_migration_phase_can_run_alone(kustomization: str) -> None:
    """`kubectl apply -k ... -l deploy.varedit.io/phase=migrate` applies the Job with all it needs: its
    ConfigMap and the policies that let it reach PostgreSQL and DNS, and nothing that serves."""
    objects = render(kustomization)
    phase = [
        o for o in objects if o["metadata"].get("labels", {}).get("deploy.varedit.io/phase") == "migrate"
    ]
    (job,) = of_kind(phase, "Job")
    (c,) = pod_spec(job)["containers"]
    assert c["command"] == ["alembic", "upgrade", "head"]
    assert of_kind(phase, "Deployment") == []
    assert {cm["metadata"]["name"] for cm in of_kind(phase, "ConfigMap")} >= {
        e["configMapRef"]["name"] for e in c["envFrom"]
    }
    pod = job["spec"]["template"]["metadata"]["labels"]
    ports = {
        port["port"]
        for p in of_kind(phase, "NetworkPolicy")
        if selects(p["spec"]["podSelector"], pod)
        for rule in p["spec"].get("egress", [])
        for port in rule["ports"]
    }
    assert ports == {53, 5432}


# -- metric names -----------------------------------------------------------------------------------


@functools.cache
def exported_metrics() -> set[str]:
    """Every series name the API (api/metrics.py), the workers (worker/metrics.py) and beat
    (worker/job_gauges.py) export."""
    names = set()
    for module in ("api/metrics.py", "worker/metrics.py", "worker/job_gauges.py"):
        names |= set(re.findall(r'"(varedit_[a-z_]+)"', (ROOT / module).read_text()))
    suffixes = ("", "_total", "_bucket", "_sum", "_count")
    return {n + s for n in names for s in suffixes}


def test_the_scaling_queries_name_exported_metrics() -> None:
    for kustomization in KUSTOMIZATIONS:
        for so in of_kind(render(kustomization), "ScaledObject"):
            for t in so["spec"]["triggers"]:
                used = set(re.findall(r"\bvaredit_[a-z_]+", t["metadata"]["query"]))
                assert used and used <= exported_metrics(), used - exported_metrics()


def test_the_grafana_dashboard_shows_the_platform_with_exported_metrics() -> None:
    dashboard = json.loads((K8S / "grafana" / "varedit-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    used = {m for e in exprs for m in re.findall(r"\bvaredit_[a-z_]+", e)}
    assert used <= exported_metrics(), used - exported_metrics()
    assert {
        "varedit_queue_depth",
        "varedit_queue_oldest_age_seconds",
        "varedit_worker_edits_total",
        "varedit_worker_run_seconds_bucket",
        "varedit_workers_ready",
        "varedit_webhook_deliveries_pending",
        "varedit_webhook_attempts_total",
        "varedit_worker_busy",
    } <= used
    for quantile in ("0.5", "0.99"):
        assert any(f"histogram_quantile({quantile}, " in e for e in exprs)
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
