"""The OpenVINO C++ sample shipped in every bundle (edgetl/runtime/cpp/openvino): built with cmake and g++,
run on a bundle folder made here, and compared with Python's preprocessing and OpenVINO's Python API.

The bundle is written by hand (not by ``edgetl package``) so that this test pins the C++ sample to the
bundle.json schema alone. The model is a tiny OpenVINO graph built in code (no torch, no training)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from edgetl.preprocessing import PreprocessSpec

pytestmark = [pytest.mark.slow, pytest.mark.openvino]

CPP_DIR = Path(__file__).resolve().parents[2] / "edgetl" / "runtime" / "cpp"
LABELS = ["ants", "bees", "wasps"]
SIZE, RESIZE = 64, 73  # small tensors keep the test fast; 73 makes the crop offsets odd


def _openvino_cmake_dir() -> Path | None:
    try:
        import openvino
    except ImportError:
        return None
    path = Path(openvino.__file__).parent / "cmake"
    return path if (path / "OpenVINOConfig.cmake").is_file() else None


@pytest.fixture(scope="module")
def classify_bin(tmp_path_factory) -> Path:
    """The sample built once per module, Release, as its README says."""
    cmake, cxx = shutil.which("cmake"), shutil.which("g++") or shutil.which("c++")
    if not cmake or not cxx:
        pytest.skip("cmake and g++ are needed to build the C++ sample")
    ov_dir = _openvino_cmake_dir()
    if ov_dir is None:
        pytest.skip("the openvino Python package with its cmake folder (OpenVINOConfig.cmake) is needed")
    build = tmp_path_factory.mktemp("cpp-openvino-build")
    env = {**os.environ, "CXX": cxx}
    for cmd in ([cmake, "-S", str(CPP_DIR / "openvino"), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release",
                 f"-DOpenVINO_DIR={ov_dir}"],
                [cmake, "--build", str(build), "-j2"]):
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
        assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    binary = build / "edgetl_classify"
    assert binary.is_file()
    return binary


def _tiny_model():
    """A fixed random conv net: conv 3x3/2 -> relu -> conv 3x3/2 -> relu -> global mean -> linear (3 logits),
    plus the mean colour per channel: its logits depend on texture and colour, so the test images get
    different answers."""
    import openvino as ov
    import openvino.opset13 as ops

    rng = np.random.default_rng(7)
    x = ops.parameter([1, 3, SIZE, SIZE], np.float32, name="input")
    w1 = ops.constant(rng.normal(0, 0.5, (8, 3, 3, 3)).astype(np.float32))
    h = ops.relu(ops.convolution(x, w1, [2, 2], [1, 1], [1, 1], [1, 1]))
    w2 = ops.constant(rng.normal(0, 0.3, (8, 8, 3, 3)).astype(np.float32))
    h = ops.relu(ops.convolution(h, w2, [2, 2], [1, 1], [1, 1], [1, 1]))
    h = ops.reduce_mean(h, ops.constant(np.array([2, 3], np.int64)), keep_dims=False)
    w3 = ops.constant(rng.normal(0, 0.2, (8, len(LABELS))).astype(np.float32))
    colour = ops.reduce_mean(x, ops.constant(np.array([2, 3], np.int64)), keep_dims=False)  # mean R, G, B
    w4 = ops.constant((8 * np.eye(3)).astype(np.float32))
    logits = ops.add(ops.matmul(h, w3, False, False), ops.matmul(colour, w4, False, False))
    logits.output(0).get_tensor().set_names({"logits"})
    return ov.Model([logits], [x], "edgetl_tiny")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _write_bundle(root: Path, spec: PreprocessSpec, model_dir: Path | None = None) -> Path:
    """A bundle folder per the bundle.json schema 1 (what `edgetl package --dir` writes)."""
    import openvino as ov

    (root / "model").mkdir(parents=True)
    if model_dir is None:
        ov.save_model(_tiny_model(), root / "model" / "model.xml", compress_to_fp16=False)
    else:
        for name in ("model.xml", "model.bin"):
            shutil.copy(model_dir / name, root / "model" / name)
    (root / "labels.txt").write_text("".join(f"{label}\n" for label in LABELS))
    files = {p.relative_to(root).as_posix(): _sha256(p) for p in sorted(root.rglob("*")) if p.is_file()}
    bundle = {
        "schema": 1, "task": "image-classification", "target": "intel-cpu", "precision": "fp32",
        "runtime": "openvino", "model": {"file": "model/model.xml", "precision_ran": "fp32"},
        "input": {"name": "input", "shape": [1, 3, SIZE, SIZE], "layout": "NCHW", "dtype": "float32",
                  "channel_order": "RGB"},
        "preprocessing": spec.to_dict(),
        "output": {"name": "logits", "semantics": "logits", "scores": "softmax"},
        "labels": LABELS, "files": files,
    }
    (root / "bundle.json").write_text(json.dumps(bundle, indent=2))
    return root


def _pattern(width: int, height: int, seed: int) -> np.ndarray:
    """Smooth colour gradients plus noise and a few hard edges: exercises resampling and JPEG."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    channels = []
    for _ in range(3):
        fx, fy, phase = rng.uniform(0.01, 0.12, 2).tolist() + [rng.uniform(0, 6.3)]
        channels.append(127 + 90 * np.sin(fx * xx + fy * yy + phase))
    img = np.stack(channels, -1) + rng.normal(0, 12, (height, width, 1))
    img[..., seed % 3] += 70  # a dominant colour, so the images fall in different classes
    img[height // 3: height // 2, width // 4: width // 2] = rng.uniform(0, 255, 3)  # a flat block: edges
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, Path]:
    """JPEG and PNG test images of varied sizes, aspect ratios and modes."""
    from PIL import Image

    root = tmp_path_factory.mktemp("cpp-images")
    out: dict[str, Path] = {}

    def save(name: str, image: Image.Image, **kwargs) -> None:
        out[name] = root / name
        image.save(out[name], **kwargs)

    save("landscape.jpg", Image.fromarray(_pattern(320, 240, 1)), quality=90)
    save("portrait_gray.jpg", Image.fromarray(_pattern(150, 401, 2)[..., 1]), quality=85)  # mode L
    save("square_420.jpg", Image.fromarray(_pattern(97, 97, 3)), quality=75)  # upscaled, 4:2:0 chroma
    save("portrait.png", Image.fromarray(_pattern(200, 300, 4)))
    rgba = np.dstack([_pattern(300, 180, 5), np.linspace(0, 255, 300, dtype=np.uint8)[None, :].repeat(180, 0)])
    save("rgba.png", Image.fromarray(rgba))
    save("gray.png", Image.fromarray(_pattern(73, 120, 6)[..., 0]))  # shorter side == resize: no resize
    save("palette_alpha.png", Image.fromarray(_pattern(90, 60, 7)).quantize(16), transparency=3)
    save("tiny.png", Image.fromarray(_pattern(21, 13, 8)))  # far smaller than the input: upscaled
    save("gray16.png", Image.fromarray((_pattern(130, 90, 9)[..., 2].astype(np.uint16) * 257 + 100)))
    return out


@pytest.fixture(scope="module")
def bundles(tmp_path_factory) -> dict[str, Path]:
    """One bundle per interpolation, the same model in each."""
    root = tmp_path_factory.mktemp("cpp-bundles")
    made = {"bilinear": _write_bundle(root / "bilinear", PreprocessSpec(SIZE, RESIZE, interpolation="bilinear"))}
    for interpolation in ("bicubic", "nearest"):
        spec = PreprocessSpec(SIZE, RESIZE, interpolation=interpolation)
        made[interpolation] = _write_bundle(root / interpolation, spec, root / "bilinear" / "model")
    return made


def _run(binary: Path, *args, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run([str(binary), *map(str, args)], capture_output=True, text=True, timeout=120)
    if check:
        assert done.returncode == 0, f"exit {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done


def _python_tensors(bundle: Path, paths: list[Path]) -> np.ndarray:
    from PIL import Image

    spec = PreprocessSpec.from_dict(json.loads((bundle / "bundle.json").read_text())["preprocessing"])
    batch = []
    for p in paths:
        with Image.open(p) as image:
            batch.append(spec.apply(image))
    return np.stack(batch)


def _cpp_tensors(binary: Path, bundle: Path, paths: list[Path], tmp_path: Path) -> tuple[np.ndarray, list[str]]:
    dump = tmp_path / f"input-{bundle.name}.f32"
    done = _run(binary, bundle, *paths, "--dump-input", dump, "--top-k", 3)
    tensors = np.fromfile(dump, np.float32).reshape(len(paths), 3, SIZE, SIZE)
    return tensors, done.stdout.splitlines()


def test_cpp_sample_matches_python(classify_bin, bundles, images, tmp_path):
    import openvino as ov

    bundle = bundles["bilinear"]
    paths = list(images.values())
    cpp_input, lines = _cpp_tensors(classify_bin, bundle, paths, tmp_path)
    py_input = _python_tensors(bundle, paths)

    # The tensors: PNG decodes losslessly and the sample copies Pillow's fixed-point resampling, the
    # alpha compositing and numpy's float32 normalisation, so PNG tensors agree to the last bit.
    # JPEG: stb_image and Pillow's libjpeg-turbo use different IDCT/chroma-upsampling code. Measured on
    # these images: 7-16% of the values differ, by one level (1/255/0.225 = 0.0174 after normalisation),
    # two at worst (0.035, 4:2:0 chroma), mean |diff| 0.001-0.003. The bounds allow four levels.
    diffs = {p.name: float(np.abs(c - q).max()) for p, c, q in zip(paths, cpp_input, py_input)}
    print("max |C++ - Python| per image (normalised tensor):", diffs)
    for name, diff in diffs.items():
        if name.endswith(".png"):
            assert diff < 1e-6, (name, diff)
        else:
            assert diff < 0.07, (name, diff)
            mean = float(np.abs(cpp_input[paths.index(images[name])] - py_input[paths.index(images[name])]).mean())
            assert mean < 0.005, (name, mean)  # most values identical

    # The predictions: the same top-1 as Python + OpenVINO on Python's tensor, scores close.
    compiled = ov.Core().compile_model(bundle / "model" / "model.xml", "CPU")
    assert len(lines) == len(paths)
    for p, line, tensor in zip(paths, lines, py_input):
        fields = line.split("\t")
        assert fields[0] == str(p) and len(fields) == 1 + 2 * 3, line
        logits = compiled(tensor[None])[0][0].astype(np.float64)
        probs = np.exp(logits - logits.max())
        probs /= probs.sum()
        order = np.argsort(-probs)
        assert fields[1] == LABELS[order[0]], (p.name, line, probs)
        cpp_scores = dict(zip(fields[1::2], map(float, fields[2::2])))
        for label, score in cpp_scores.items():
            assert abs(score - probs[LABELS.index(label)]) < 0.02, (p.name, label, score, probs)
        assert [LABELS.index(label) for label in fields[1::2]] == list(order[:3]) or p.suffix == ".jpg"
    print("C++ output:", *lines, sep="\n  ")
    assert len({line.split("\t")[1] for line in lines}) > 1, "the test model should not answer one class for all"


@pytest.mark.parametrize("interpolation", ["bicubic", "nearest"])
def test_cpp_sample_other_filters(classify_bin, bundles, images, tmp_path, interpolation):
    """Pillow's bicubic and nearest resizes are reproduced too (PNG inputs: exact decoding)."""
    bundle = bundles[interpolation]
    paths = [p for name, p in images.items() if name.endswith(".png")]
    cpp_input, _ = _cpp_tensors(classify_bin, bundle, paths, tmp_path)
    diff = np.abs(cpp_input - _python_tensors(bundle, paths)).max(axis=(1, 2, 3))
    assert (diff < 1e-6).all(), dict(zip([p.name for p in paths], diff))


def test_cpp_sample_missing_bundle_json(classify_bin, images, tmp_path):
    done = _run(classify_bin, tmp_path, images["portrait.png"], check=False)
    assert done.returncode != 0 and not done.stdout
    message = done.stderr.strip()
    assert len(message.splitlines()) == 1 and "bundle.json" in message, message


def test_cpp_sample_malformed_bundle_json(classify_bin, bundles, images, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(bundles["bilinear"], bad)
    (bad / "bundle.json").write_text('{"schema": 1, "model": ')
    done = _run(classify_bin, bad, images["portrait.png"], check=False)
    assert done.returncode != 0 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "malformed bundle.json" in done.stderr

    data = json.loads((bundles["bilinear"] / "bundle.json").read_text())
    (bad / "bundle.json").write_text(json.dumps({**data, "schema": 99}))
    done = _run(classify_bin, bad, images["portrait.png"], check=False)
    assert done.returncode != 0 and "schema 99" in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_cpp_sample_undecodable_image(classify_bin, bundles, images, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 this is not really a JPEG")
    done = _run(classify_bin, bundles["bilinear"], broken, images["portrait.png"], check=False)
    assert done.returncode == 1
    assert len(done.stderr.strip().splitlines()) == 1 and str(broken) in done.stderr, done.stderr
    # the other image is still classified
    assert [line.split("\t")[0] for line in done.stdout.splitlines()] == [str(images["portrait.png"])]


def _tensorrt_paths() -> tuple[Path, Path] | None:
    """(include dir, libnvinfer) where the TensorRT sample's CMakeLists.txt would find them."""
    roots = [Path(p) for p in (os.environ.get("TENSORRT_ROOT"), "/usr/local/TensorRT") if p]
    includes = [r / "include" for r in roots] + [Path("/usr/include/aarch64-linux-gnu"), Path("/usr/include/x86_64-linux-gnu")]
    libs = [r / "lib" for r in roots] + [Path("/usr/lib/aarch64-linux-gnu"), Path("/usr/lib/x86_64-linux-gnu")]
    include = next((d for d in includes if (d / "NvInferRuntime.h").is_file()), None)
    lib = next((f for d in libs for f in sorted(d.glob("libnvinfer.so*"))), None)
    return (include, lib) if include and lib else None


@pytest.mark.tensorrt
@pytest.mark.gpu
def test_tensorrt_sample_builds(tmp_path):
    """The TensorRT sample compiles where TensorRT's C++ headers, libnvinfer and the CUDA toolkit exist
    (a Jetson, a workstation with the TensorRT tar); running it needs an engine built on that device."""
    if not shutil.which("cmake") or not (shutil.which("g++") or shutil.which("c++")):
        pytest.skip("cmake and g++ are needed to build the C++ sample")
    if _tensorrt_paths() is None:
        pytest.skip("TensorRT C++ headers and libnvinfer not found (set TENSORRT_ROOT): the TensorRT sample "
                    "is only compiled where TensorRT exists")
    if not (shutil.which("nvcc") or Path("/usr/local/cuda/include/cuda_runtime_api.h").is_file()):
        pytest.skip("the CUDA toolkit (cudart headers) is needed to build the TensorRT sample")
    for cmd in (["cmake", "-S", str(CPP_DIR / "tensorrt"), "-B", str(tmp_path), "-DCMAKE_BUILD_TYPE=Release"],
                ["cmake", "--build", str(tmp_path), "-j2"]):
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    assert (tmp_path / "edgetl_classify").is_file()
