"""A package is self-contained: every artifact in it loads and runs in a fresh process that has neither the
model's code nor the folder it was built from, and gives the outputs the model gave where it was built."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import torch
from conftest import fast_options

import inferforge
from inferforge.manifest import read_manifest

MODEL_FILE = textwrap.dedent('''
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.head = nn.Linear(4, 5)

        def forward(self, image):
            return self.head(torch.relu(self.conv(image)).mean(dim=(2, 3)))

    def make():
        torch.manual_seed(0)
        return Net().eval(), {"image": torch.randn(2, 3, 8, 8)}
''')

CHILD = textwrap.dedent('''
    import json, sys
    import numpy as np
    import inferforge

    package, keys, data = sys.argv[1], json.loads(sys.argv[2]), np.load(sys.argv[3])
    worst = {}
    for key in keys:
        runner = inferforge.load(package, artifact=key, trust_source=True)
        got = runner({"image": data["image"]})
        worst[key] = float(np.abs(next(iter(got.values())) - data["want"]).max())
    leaked = [m for m in sys.modules if m.startswith("freshmodel")]
    print(json.dumps({"worst": worst, "leaked": leaked}))
''')


def test_every_packaged_artifact_loads_in_a_fresh_process_without_the_model(tmp_path: Path) -> None:
    build = tmp_path / "build"
    build.mkdir()
    (build / "freshmodel.py").write_text(MODEL_FILE)
    sys.path.insert(0, str(build))
    try:
        out = tmp_path / "pkg"
        inferforge.optimize("freshmodel:make", out=out, name="fresh", fallbacks=5,
                            options=fast_options(backends=("eager", "torchscript", "onnxruntime", "openvino", "source"),
                                                 precisions=("fp32",)))
        import freshmodel

        model, _ = freshmodel.make()
    finally:
        sys.path.remove(str(build))
        sys.modules.pop("freshmodel", None)
    shutil.rmtree(build)  # the model's code is gone: only the package is left
    image = np.random.default_rng(3).standard_normal((3, 3, 8, 8)).astype(np.float32)
    with torch.inference_mode():
        want = model(torch.from_numpy(image)).numpy()
    np.savez(tmp_path / "data.npz", image=image, want=want)
    keys = [entry["key"] for entry in read_manifest(out)["artifacts"]]
    assert {"eager-fp32", "torchscript-fp32", "onnxruntime-fp32", "source-fp32"} <= set(keys), keys

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", CHILD, str(out), json.dumps(keys), str(tmp_path / "data.npz")],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(result["worst"]) == set(keys)
    assert all(error < 1e-4 for error in result["worst"].values()), result["worst"]
    assert result["leaked"] == [], result["leaked"]
