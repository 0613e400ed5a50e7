"""deploy/ checked offline: Compose against the Compose specification, manifests against Kubernetes'
schemas, the Dockerfiles' lines, and every `vigil` command line in them against the CLI's own parser.

Schemas come from installed packages (the `test` extra), never from the network:
check-jsonschema vendors the compose-spec schema; kubernetes-validate bundles Kubernetes' schemas.
"""
from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tomllib
from importlib import resources
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from cli.main import build_parser
from scoring.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
# The oldest Kubernetes these manifests promise to work on, and the newest whose schemas are bundled.
K8S_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())
UID = 10001  # the images' user, and the pods' runAsUser


def load_compose() -> dict:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())  # resolves the anchors and << merges


def compose_schema() -> dict:
    ref = resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    return json.loads(ref.read_text(encoding="utf-8"))


def schema_errors(schema: dict, doc) -> list[str]:
    # by the draft's name: the compose schema says "https://json-schema.org/draft-07/schema", which
    # jsonschema does not know by that spelling
    drafts = {"draft-04": jsonschema.Draft4Validator, "draft-06": jsonschema.Draft6Validator,
              "draft-07": jsonschema.Draft7Validator, "2019-09": jsonschema.Draft201909Validator,
              "2020-12": jsonschema.Draft202012Validator}
    cls = next(v for k, v in drafts.items() if k in schema.get("$schema", "2020-12"))
    cls.check_schema(schema)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in cls(schema).iter_errors(doc)]


def kustomization() -> dict:
    return yaml.safe_load((K8S / "kustomization.yaml").read_text())


def manifests() -> dict[str, dict]:
    """kustomization.yaml's resources by file name (one document each)."""
    return {name: yaml.safe_load((K8S / name).read_text()) for name in kustomization()["resources"]}


def by_kind(kind: str, name: str | None = None) -> dict:
    found = [m for m in manifests().values() if m["kind"] == kind and name in (None, m["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def pod_spec(doc: dict) -> dict:
    return doc["spec"]["jobTemplate"]["spec"]["template"]["spec"] if doc["kind"] == "CronJob" \
        else doc["spec"]["template"]["spec"]


def is_vigil(image: str) -> bool:
    return image.split(":")[0].rsplit("/", 1)[-1] in ("vigil", "vigil-cuda")


def vigil_command_lines() -> list[tuple[str, list[str]]]:
    """(where, argv) for every vigil container in compose.yaml and the manifests (ENTRYPOINT is vigil)."""
    lines = [(f"compose.yaml:{name}", [str(a) for a in svc["command"]])
             for name, svc in load_compose()["services"].items() if is_vigil(svc.get("image", ""))]
    for name, doc in manifests().items():
        if doc["kind"] in ("Deployment", "CronJob"):
            for c in pod_spec(doc)["containers"]:
                assert is_vigil(c["image"]) and "command" not in c, f"{name}: run vigil through args"
                lines.append((f"k8s/{name}:{c['name']}", [str(a) for a in c["args"]]))
    return lines


def documented_command_lines() -> list[tuple[str, list[str]]]:
    """`vigil ...` quoted in deploy/'s README and comments."""
    found = []
    for path in [DEPLOY / "README.md", *sorted(DEPLOY.glob("Dockerfile*")), DEPLOY / "compose.yaml",
                 *sorted(K8S.glob("*.yaml"))]:
        for m in re.finditer(r"`vigil ([^`]+)`", path.read_text()):
            found.append((f"{path.relative_to(DEPLOY)}: `vigil {m.group(1)}`", shlex.split(m.group(1))))
    return found


def parse(where: str, argv: list[str], capsys):
    try:
        return build_parser().parse_args(argv)
    except SystemExit as exc:
        pytest.fail(f"{where}: `vigil {' '.join(argv)}` is not a valid command line (exit {exc.code}): "
                    f"{capsys.readouterr().err.strip()}")


def k8s_validate(name: str, doc: dict, version: str) -> None:
    try:  # strict: unknown fields (typos) are errors too
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        pytest.fail(f"{name} on Kubernetes {version}: {exc.caught.message} at {list(exc.caught.absolute_path)}")


# --- Compose -----------------------------------------------------------------------------------------

def test_compose_file_matches_the_compose_specification():
    errors = schema_errors(compose_schema(), load_compose())
    assert not errors, "\n".join(errors)


def test_the_compose_schema_catches_a_misspelt_key():
    doc = load_compose()
    doc["services"]["trainer"]["comand"] = doc["services"]["trainer"].pop("command")
    assert schema_errors(compose_schema(), doc)


def test_compose_runs_kafka_in_kraft_mode_with_consistent_listeners():
    svc = load_compose()["services"]
    env = {k: str(v) for k, v in svc["kafka"]["environment"].items()}
    assert svc["kafka"]["image"].startswith("apache/kafka:")
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    listeners = dict(re.fullmatch(r"(\w+)://[^:]*:(\d+)", item).groups() for item in env["KAFKA_LISTENERS"].split(","))
    protocols = dict(item.split(":") for item in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    assert set(listeners) <= set(protocols), "every listener needs a security protocol"
    controller = env["KAFKA_CONTROLLER_LISTENER_NAMES"]
    voter_id, voter = env["KAFKA_CONTROLLER_QUORUM_VOTERS"].split("@")
    assert voter_id == env["KAFKA_NODE_ID"] and voter == f"kafka:{listeners[controller]}"
    advertised = dict(item.split("://") for item in env["KAFKA_ADVERTISED_LISTENERS"].split(","))
    assert set(advertised) <= set(listeners) - {controller}
    assert env["KAFKA_INTER_BROKER_LISTENER_NAME"] in advertised
    assert env["KAFKA_LOG_DIRS"] in [v.split(":")[1] for v in svc["kafka"]["volumes"]], "the data must persist"
    assert "healthcheck" in svc["kafka"]
    # Vigil's containers use the address Kafka advertises to them.
    for name, argv in vigil_command_lines():
        if name.startswith("compose") and "--broker" in argv:
            assert argv[argv.index("--broker") + 1] == advertised["PLAINTEXT"], name


def test_compose_services_workers_trainer_and_the_demo_plant():
    compose = load_compose()
    svc = compose["services"]
    assert set(svc) == {"kafka", "worker-1", "worker-2", "detector", "trainer", "simulate"}
    for name in ("worker-1", "worker-2", "detector", "trainer", "simulate"):
        build = svc[name]["build"]
        context = (DEPLOY / build["context"]).resolve()
        assert context == ROOT and (context / build["dockerfile"]).is_file()
        assert svc[name]["depends_on"], f"{name} must wait for Kafka or a worker"
    w1, w2 = svc["worker-1"], svc["worker-2"]
    assert {k: v for k, v in w1.items() if k != "ports"} == w2, "the workers differ only in published ports"
    assert [p.rsplit(":", 1)[-1] for p in w1["ports"]] == [str(Settings().web_port)] and "ports" not in w2
    assert w1["environment"]["VIGIL_WEB_TOKEN"].startswith("${VIGIL_WEB_TOKEN:?"), "no default token"
    assert w1["volumes"] == ["registry:/registry:ro"] and svc["trainer"]["volumes"] == ["registry:/registry"]
    assert svc["detector"]["volumes"] == ["registry:/registry:ro"] and "ports" not in svc["detector"]
    assert set(w1["depends_on"]) == {"kafka", "detector"}
    assert svc["simulate"]["profiles"] == ["demo"] and svc["simulate"]["restart"] == "no"
    assert set(compose["volumes"]) >= {"registry", "kafka-data"}


# --- Kubernetes --------------------------------------------------------------------------------------

def test_kustomization_lists_every_manifest_and_only_existing_ones():
    k = kustomization()
    assert k["apiVersion"] == "kustomize.config.k8s.io/v1beta1" and k["kind"] == "Kustomization"
    listed = k["resources"]
    assert len(set(listed)) == len(listed) and all((K8S / name).is_file() for name in listed)
    on_disk = {p.name for p in K8S.glob("*.y*ml")} - {"kustomization.yaml"}
    assert on_disk == set(listed), "a manifest in deploy/k8s/ that the kustomization does not apply"
    assert {i["name"] for i in k["images"]} == {"vigil", "vigil-cuda"}
    assert {m["kind"] for m in manifests().values()} == {
        "ConfigMap", "PersistentVolumeClaim", "Deployment", "Service", "CronJob"}


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("name", kustomization()["resources"])
def test_manifest_matches_the_kubernetes_schema(name, version):
    docs = list(yaml.safe_load_all((K8S / name).read_text()))
    assert len(docs) == 1
    k8s_validate(name, docs[0], version)


def test_the_kubernetes_schema_catches_a_misspelt_key():
    doc = manifests()["worker-deployment.yaml"]
    doc["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, K8S_VERSIONS[0], strict=True)


@pytest.mark.skipif(not (shutil.which("kubectl") or shutil.which("kustomize")), reason="no kubectl or kustomize")
def test_kustomize_builds_the_base_and_its_output_validates():
    cmd = ["kubectl", "kustomize"] if shutil.which("kubectl") else ["kustomize", "build"]
    out = subprocess.run([*cmd, str(K8S)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    docs = [d for d in yaml.safe_load_all(out.stdout) if d]
    assert len(docs) == len(kustomization()["resources"])
    for doc in docs:
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "vigil"
        k8s_validate(f"kustomize output {doc['kind']}", doc, K8S_VERSIONS[-1])


def test_manifests_refer_to_each_other_consistently():
    deploy, cron = by_kind("Deployment", "vigil-worker"), by_kind("CronJob")
    service, config = by_kind("Service", "vigil-worker"), by_kind("ConfigMap")
    pvc = by_kind("PersistentVolumeClaim")
    assert deploy["spec"]["replicas"] == 2
    labels = deploy["spec"]["template"]["metadata"]["labels"]
    assert deploy["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["selector"].items() <= labels.items() and service["spec"]["type"] == "ClusterIP"
    worker = pod_spec(deploy)["containers"][0]
    (port,) = worker["ports"]
    assert port == {"name": "http", "containerPort": Settings().web_port}
    assert service["spec"]["ports"] == [{"name": "http", "port": 6066, "targetPort": "http"}]
    assert service["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
    assert "VIGIL_BROKER" in config["data"]
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    for doc in (deploy, cron):
        spec = pod_spec(doc)
        (c,) = spec["containers"]
        assert c["envFrom"] == [{"configMapRef": {"name": config["metadata"]["name"]}}]
        assert "requests" in c["resources"] and "limits" in c["resources"]
        assert spec["securityContext"]["runAsNonRoot"] and spec["securityContext"]["runAsUser"] == UID
        (vol,) = spec["volumes"]
        assert vol["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
        (mount,) = c["volumeMounts"]
        assert mount["name"] == vol["name"] and mount["mountPath"] == "/registry"
    # the workers read the registry, the trainer writes it, at the path its promotions name
    assert pod_spec(deploy)["volumes"][0]["persistentVolumeClaim"]["readOnly"] is True
    assert worker["volumeMounts"][0]["readOnly"] is True
    trainer = pod_spec(cron)["containers"][0]
    assert not trainer["volumeMounts"][0].get("readOnly")
    assert worker["env"] == [{"name": "VIGIL_WEB_TOKEN",
                              "valueFrom": {"secretKeyRef": {"name": "vigil-web", "key": "token"}}}]
    assert "kubectl create secret generic vigil-web --from-literal=token=" in (DEPLOY / "README.md").read_text()
    assert cron["spec"]["schedule"] == "0 */6 * * *" and cron["spec"]["concurrencyPolicy"] == "Forbid"


# --- Probes ------------------------------------------------------------------------------------------

def probe_commands() -> list[tuple[str, list[str]]]:
    worker = pod_spec(by_kind("Deployment", "vigil-worker"))["containers"][0]
    found = [(f"k8s {kind}", worker[kind]["exec"]["command"])
             for kind in ("startupProbe", "readinessProbe", "livenessProbe")]
    test = load_compose()["services"]["worker-1"]["healthcheck"]["test"]
    assert test[0] == "CMD"
    return [*found, ("compose healthcheck", test[1:])]


def test_every_probe_is_the_same_token_carrying_fetch_of_metrics():
    commands = probe_commands()
    assert all(cmd == commands[0][1] for _, cmd in commands), "compose and k8s probes differ"
    python, flag, code = commands[0][1]
    assert (python, flag) == ("python", "-c")
    assert f"http://127.0.0.1:{Settings().web_port}/metrics" in code and "VIGIL_WEB_TOKEN" in code
    assert "$" not in code, "compose would interpolate it"


def test_probe_succeeds_with_the_token_and_fails_without_it():
    from stream.board import Board
    from stream.web import serve

    code = probe_commands()[0][1][2]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    local = code.replace(f"127.0.0.1:{Settings().web_port}", f"127.0.0.1:{port}")

    async def probe(token: str) -> int:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", local, env={**os.environ, "VIGIL_WEB_TOKEN": token},
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        return await asyncio.wait_for(proc.wait(), 30)

    async def run():
        runner = await serve(Board(), "0.0.0.0", port, "s3cret")  # as in the pods: all interfaces
        try:
            return await probe("s3cret"), await probe("wrong")
        finally:
            await runner.cleanup()

    good, bad = asyncio.run(run())
    assert good == 0 and bad != 0


# --- The CLI behind every command line ---------------------------------------------------------------

COMMAND_LINES = vigil_command_lines() + documented_command_lines()


@pytest.mark.parametrize("where,argv", COMMAND_LINES, ids=[where for where, _ in COMMAND_LINES])
def test_command_line_parses_with_the_cli(where, argv, capsys):
    args = parse(where, argv, capsys)
    # argparse also takes unambiguous prefixes (--partition); deploy files spell options out in full
    sub = build_parser()._subparsers._group_actions[0].choices[args.command]
    flags = {a.split("=")[0] for a in argv if a.startswith("--")}
    assert flags <= set(sub._option_string_actions), f"{where}: abbreviated or unknown {flags - set(sub._option_string_actions)}"


def test_services_run_the_intended_commands(capsys):
    lines = dict(vigil_command_lines())
    args = {where: parse(where, argv, capsys) for where, argv in lines.items()}
    workers = [a for w, a in args.items() if a.command == "worker"]
    assert len(workers) == 3 and all(a.partitions == 6 and a.web_host == "0.0.0.0" for a in workers)
    assert all(a.web_port == Settings().web_port for a in workers)
    # one Kafka node in compose; a production cluster (Kubernetes) keeps 3 replicas of each topic
    assert args["compose.yaml:worker-1"].replication == 1
    assert args["k8s/worker-deployment.yaml:worker"].replication == 3
    service = args["compose.yaml:trainer"]
    assert (service.every, service.history, service.registry, service.once) == (6 * 3600, 7 * 86400, "/registry", False)
    cron = args["k8s/trainer-cronjob.yaml:trainer"]
    assert (cron.once, cron.history, cron.registry) == (True, 7 * 86400, "/registry")
    sim = args["compose.yaml:simulate"]
    assert (sim.command, sim.rate, sim.points) == ("simulate", 20.0, 100_000)


def test_the_gpu_detector_process_is_deployed_and_the_workers_use_it(capsys):
    det = by_kind("Deployment", "vigil-detector")
    (c,) = pod_spec(det)["containers"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    images = {i["name"]: i for i in kustomization()["images"]}
    assert images[c["image"]]["newTag"] == "cuda"
    args = parse("k8s detector", [str(a) for a in c["args"]], capsys)
    assert (args.command, args.host, args.port, args.device) == ("detector", "0.0.0.0", 7070, "cuda")
    svc = by_kind("Service", "vigil-detector")
    assert svc["spec"]["selector"].items() <= det["spec"]["template"]["metadata"]["labels"].items()
    assert svc["spec"]["ports"][0]["port"] == 7070
    worker = pod_spec(by_kind("Deployment", "vigil-worker"))["containers"][0]
    assert parse("k8s worker", [str(a) for a in worker["args"]], capsys).detector == "vigil-detector:7070"
    compose = load_compose()["services"]
    assert parse("compose worker", [str(a) for a in compose["worker-1"]["command"]], capsys).detector == "detector:7070"
    assert parse("compose detector", [str(a) for a in compose["detector"]["command"]], capsys).port == 7070


def test_every_vigil_variable_in_deploy_is_read_by_the_code():
    code = "".join(p.read_text() for d in ("cli", "producers", "stream", "training", "scoring", "detectors")
                   for p in (ROOT / d).rglob("*.py"))
    texts = [DEPLOY / "README.md", DEPLOY / "compose.yaml", *K8S.glob("*.yaml")]
    names = {n for p in texts for n in re.findall(r"\bVIGIL_[A-Z_]+\b", p.read_text())}
    assert {"VIGIL_BROKER", "VIGIL_WEB_TOKEN", "VIGIL_KAFKA_SECURITY_PROTOCOL"} <= names
    assert not sorted(n for n in names if f'"{n}"' not in code), "variables no code reads"


# --- Dockerfiles -------------------------------------------------------------------------------------

def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments), continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", "\n".join(l for l in path.read_text().splitlines() if not l.lstrip().startswith("#")))
    return [(l.split(None, 1)[0].upper(), l.split(None, 1)[1].strip()) for l in text.splitlines() if l.strip()]


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.cuda"])
def test_dockerfile_builds_the_package_and_runs_vigil_as_a_user(name):
    steps = instructions(DEPLOY / name)
    kinds = [k for k, _ in steps]
    assert kinds[0] == "FROM" and kinds.count("FROM") == 1
    base = steps[0][1]
    if name == "Dockerfile":
        assert base == "python:3.11-slim"
    else:
        assert re.fullmatch(r"nvidia/cuda:\d+\.\d+\.\d+-runtime-ubuntu\d\d\.\d\d", base)
    # COPY sources exist in the build context (the repository root) and cover what the wheel needs.
    copied = set()
    for kind, args in steps:
        if kind == "COPY":
            *sources, _dest = args.split()
            assert not any(s.startswith("--") for s in sources), "no COPY --from/--chown needed"
            assert all((ROOT / s).exists() for s in sources), f"{name}: {args}"
            copied.update(sources)
    packages = {p.rstrip("*") for p in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]}
    assert {"pyproject.toml", PYPROJECT["project"]["readme"], *packages} <= copied
    # BuildKit's <Dockerfile>.dockerignore: an allowlist that lets every COPY source through
    ignore = [l.strip() for l in (DEPLOY / f"{name}.dockerignore").read_text().splitlines()
              if l.strip() and not l.startswith("#")]
    assert ignore[0] == "*" and copied == {l[1:].rstrip("/") for l in ignore if l.startswith("!")}
    runs = " ".join(a for k, a in steps if k == "RUN")
    assert "pip install" in runs
    cpu_index = "--extra-index-url https://download.pytorch.org/whl/cpu"
    assert (cpu_index in runs) == (name == "Dockerfile")
    users = [a for k, a in steps if k == "USER"]
    assert users and users[-1].split(":")[0] == str(UID), "the last USER is the non-root vigil user"
    assert kinds.index("USER") < kinds.index("ENTRYPOINT")
    assert json.loads(dict(steps)["ENTRYPOINT"]) == ["vigil"] and "vigil" in PYPROJECT["project"]["scripts"]
    assert dict(steps)["EXPOSE"] == str(Settings().web_port)
