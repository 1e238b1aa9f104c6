"""The runtime's import rule: loading a bundle and predicting imports none of edgetl's heavy dependencies."""

from __future__ import annotations

import subprocess
import sys
import textwrap

FORBIDDEN = ("torch", "torchvision", "click", "yaml", "rich", "onnx", "timm", "matplotlib", "sklearn")


def test_runtime_imports_no_heavy_library(onnx_bundle, colour_images, tmp_path):
    script = textwrap.dedent(f"""
        import sys
        FORBIDDEN = {FORBIDDEN!r}

        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in FORBIDDEN:
                    raise ImportError(f"forbidden import on the runtime path: {{name}}")
                return None

        sys.meta_path.insert(0, Block())
        from edgetl.runtime import load
        with load({str(onnx_bundle)!r}) as model:
            prediction = model.predict({str(colour_images / "dogs" / "0.png")!r}, top_k=2)
        assert prediction.label == "dogs", prediction
        from edgetl.runtime.cli import main
        assert main(["bench", {str(onnx_bundle)!r}, "-o", {str(tmp_path / "report.json")!r}, "--rounds", "1", "--iterations", "2"]) == 0
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in FORBIDDEN)
        assert not loaded, loaded
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-2000:]
