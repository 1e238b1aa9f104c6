# Names vulture (`vulture edgetl .ci/vulture_whitelist.py --min-confidence 60`) reports as unused that are
# used where it cannot see: by name through a registry string, by a decorator, by Python itself, or as
# attributes set on objects of other libraries. Real dead code is deleted, never listed here.
# vulture matches names, not modules; `_` stands for "an object of another library".
# ruff: noqa
_ = object()

# module __getattr__ / __dir__: lazy public names (PEP 562)
__getattr__  # edgetl/__init__.py, edgetl/bench/__init__.py, edgetl/compress/quantize/__init__.py
__dir__  # edgetl/bench/__init__.py

# classes loaded from "module:Class" registry strings
TensorRTRunner  # edgetl/backends/_registry.py RUNTIMES
NNCFOpenVINO  # edgetl/compress/quantize/backend.py BACKENDS
OpenVINOToolchain  # edgetl/toolchains/__init__.py TOOLCHAINS
TensorRTToolchain  # edgetl/toolchains/__init__.py TOOLCHAINS
Finetune, Prune, Export, Build, Compile, Bench, Tune, Package  # edgetl/stages/__init__.py STAGES

# click commands a stage names by "module:function" (edgetl/stages/*.py, click_command)
compile_command, package_command

# functions registered by a decorator
_efficientnet_lite0  # edgetl/models.py @register("efficientnet_lite0", ...)

# methods another library calls
_.get_next  # onnxruntime CalibrationDataReader (edgetl/compress/quantize/ort_qdq.py)

# dataclass fields read through asdict()/to_dict() or by callers of a public function
output_dir  # edgetl.bench.BenchReport (what edgetl.benchmark returns)
layout  # edgetl.preprocessing.PreprocessSpec (saved in edgetl.json and bundle.json)
wall_time_s  # edgetl.train.trainer metrics (asdict, printed by `edgetl finetune`)

# attributes set on other libraries' objects
_.graph_optimization_level, _.intra_op_num_threads, _.log_severity_level  # onnxruntime SessionOptions
_.engine_host_code_allowed, _.DLA_core  # tensorrt Runtime / IBuilderConfig
_.builder_optimization_level, _.profiling_verbosity, _.hardware_compatibility_level  # tensorrt IBuilderConfig
_.default_device_type  # tensorrt IBuilderConfig
_._round_to  # torch_pruning BasePruner (edgetl/compress/prune/structured.py)
_.max_num_iterations  # nncf AdvancedAccuracyRestorerParameters
_.maxstring, _.maxother, _.maxlist, _.maxdict, _.maxlevel  # reprlib.Repr (edgetl/config.py)
_.aux_logits  # torchvision Inception3 (edgetl/models.py)
_.uid, _.gid, _.uname, _.gname  # tarfile.TarInfo (edgetl/package.py)

# enum members named only through their values (JSON, click choices: Precision.values())
_.FP16  # edgetl/run/keys.py Precision
_.built_from  # edgetl/run/keys.py StageKey: public API of the key (which build an engine key is compiled from)
_.finished, _.resumed, _.onnxruntime_options  # edgetl/run/records.py: fields of the JSON records (read by users of the API)
_.fit_images, _.held_out_images  # edgetl/compress/quantize/calibration_search.py SearchReport: recorded in build.json
_.NNCFTraining, _.QDQTraining  # edgetl/compress/quantize/qat.py QAT_ENGINES: named as module:Class strings
_.qat_target  # edgetl/qat.py: the QAT stage entry point, named as a string in the stage table and edgetl._LAZY
