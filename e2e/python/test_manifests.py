"""The CRDs and the example resources: the CRDs pass `kubernetes-validate --strict` for
current Kubernetes versions; every example resource validates against its CRD's schema,
and the real API server (1.20) accepts it (server-side dry run, with the schema it stores)."""

import copy
import os
import pathlib
import subprocess
import sys
import uuid

import jsonschema
import pytest
import yaml
from kubernetes import client as k8s
from kubernetes import config as k8s_config

ROOT = pathlib.Path(__file__).resolve().parents[2]
CRDS = sorted((ROOT / "manifests" / "crds").glob("*.yaml"))
EXAMPLES = sorted((ROOT / "manifests" / "examples").glob("*.yaml"))
VALIDATE = pathlib.Path(sys.executable).with_name("kubernetes-validate")


@pytest.mark.parametrize("version", ["1.29.0", "1.33.0"])
def test_the_crds_pass_kubernetes_validate_strict(version):
    out = subprocess.run([str(VALIDATE), "--strict", "-k", version, *map(str, CRDS)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.count("passed") == len(CRDS), out.stdout


def crd_schemas():
    """(kind, schema) of each CRD, made plain JSON Schema (`nullable` as a null type)."""
    def plain(s):
        if isinstance(s, dict):
            s = {k: plain(v) for k, v in s.items() if not k.startswith("x-kubernetes-")}
            if s.pop("nullable", False) and "type" in s:
                s["type"] = [s["type"], "null"]
            return s
        if isinstance(s, list):
            return [plain(x) for x in s]
        return s
    out = {}
    for f in CRDS:
        crd = yaml.safe_load(f.read_text())
        schema = plain(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"])
        out[crd["spec"]["names"]["kind"]] = schema
    return out


def example_objects():
    for f in EXAMPLES:
        for doc in yaml.safe_load_all(f.read_text()):
            if doc and doc["apiVersion"].startswith("llmgateway.io/"):
                yield f.name, doc


def test_every_example_resource_matches_its_crd_schema():
    schemas = crd_schemas()
    seen = set()
    for _, obj in example_objects():
        schema = schemas[obj["kind"]]
        jsonschema.validate(obj, schema)
        seen.add(obj["kind"])
    assert seen == {"ProviderPool", "LLMRoute", "BudgetPolicy"}, seen
    # The schema really constrains: an unknown strategy is caught.
    bad = {"apiVersion": "llmgateway.io/v1alpha1", "kind": "LLMRoute", "metadata": {"name": "x"},
           "spec": {"virtualModels": [{"name": "x", "strategy": "fastest"}]}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schemas["LLMRoute"])


def test_cross_field_rules_are_written_as_cel_for_newer_clusters():
    text = "".join(f.read_text() for f in CRDS)
    for rule in ("has(self.afterSeconds) != has(self.afterQuantile)",
                 "self.type != 'openai-compatible' || has(self.baseUrl)",
                 "has(self.limitUsd) || has(self.limitTokens)"):
        assert rule in text, rule


def test_the_api_server_accepts_every_example():
    path = os.environ.get("KUBECONFIG")
    assert path, "KUBECONFIG is not set: ./e2e/test-all.sh starts the test API server"
    subprocess.run([os.environ.get("LLM_GATEWAY_KUBECTL", "kubectl"), "apply", "--validate=false",
                    "-f", str(ROOT / "manifests" / "crds")], check=True, capture_output=True)
    k8s_config.load_kube_config(config_file=path)
    core, custom = k8s.CoreV1Api(), k8s.CustomObjectsApi()
    suffix = uuid.uuid4().hex[:6]
    namespaces = {}
    for _, obj in example_objects():
        ns = obj["metadata"]["namespace"]
        if ns not in namespaces:
            namespaces[ns] = f"{ns}-{suffix}"
            core.create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=namespaces[ns])))
        group, version = obj["apiVersion"].split("/")
        plural = {"ProviderPool": "providerpools", "LLMRoute": "llmroutes",
                  "BudgetPolicy": "budgetpolicies"}[obj["kind"]]
        obj = copy.deepcopy(obj)
        obj["metadata"]["namespace"] = namespaces[ns]
        custom.create_namespaced_custom_object(group, version, namespaces[ns], plural, obj, dry_run="All")


@pytest.mark.parametrize("version", ["1.29.0", "1.33.0"])
def test_the_example_apps_pass_kubernetes_validate_strict(version, tmp_path):
    files = []
    for f in EXAMPLES:
        for i, doc in enumerate(yaml.safe_load_all(f.read_text())):
            if doc and not doc["apiVersion"].startswith("llmgateway.io/"):
                out = tmp_path / f"{f.stem}-{i}.yaml"
                out.write_text(yaml.safe_dump(doc))
                files.append(str(out))
    assert len(files) == 5, files  # two apps: their ServiceAccounts, Pod, Deployment, ConfigMap
    out = subprocess.run([str(VALIDATE), "--strict", "-k", version, *files], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.count("passed") == len(files), out.stdout
