"""The registries: a method is one class in one module, a dataset one module (raw files and targets).

Every registered method and dataset is checked here by what it declares, without being listed: a
method's label, order, needs and typed parameters are the ones the config check, the grids, the CLI, the
workflow and the report use; a dataset's targets name a registered raw dataset whose files carry
digests. A new method module / dataset module dropped into its package is found, checked and usable.
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

import subtune.data as data_pkg
import subtune.methods as methods_pkg
from subtune import SubtuneError
from subtune.config import validate
from subtune.data import registry, targets
from subtune.data.download import SCHEMES, download_dataset
from subtune.io import sha256_file
from subtune.methods import REGISTRY, Method, Param, get_method, method_label, method_needs, method_order, register
from subtune.methods.base import NEEDS, NEEDS_PARAM
from subtune.tune import grid_points, validate_grid

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "schemas/config.schema.yaml"


def base_config():
    """The embedded default without its epsilon list (which needs SubTuning among the methods: the tests here
    keep one method)."""
    cfg = yaml.safe_load((ROOT / "config.yaml").read_text())
    cfg["selection"].pop("epsilons", None)
    return cfg


# ------------------------------------------------------------------ methods
@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_method_is_one_definition(name):
    cls = REGISTRY[name]
    assert cls.name == name and isinstance(cls.label, str) and cls.label and isinstance(cls.order, int)
    assert isinstance(cls.own_head, bool) and cls.needs in NEEDS
    if cls.needs:  # the workflow passes what it needs through this parameter (cli: --selection-state, ...)
        assert NEEDS_PARAM[cls.needs] in cls.parameters
    assert all(isinstance(p, Param) for p in cls.parameters.values())
    assert cls.defaults == {k: p.default for k, p in cls.parameters.items()}
    m = get_method(name)  # the defaults pass their own checks
    assert m.params == cls.defaults
    # the report, the workflow and the grids read the same class
    assert method_label(name) == cls.label and method_needs(name) == cls.needs
    assert set(grid_points(name, {k: [p.default] for k, p in cls.parameters.items()})[0]["params"]) == set(
        cls.parameters)
    # the config check accepts it with its defaults
    cfg = base_config()
    cfg["methods"] = {name: {}}
    cfg.pop("sweep", None)
    validate(json.loads(json.dumps(cfg)), SCHEMA)


def test_labels_are_distinct_and_the_order_is_the_classes():
    labels = [c.label for c in REGISTRY.values()]
    assert len(set(labels)) == len(labels)
    order = method_order(reversed(list(REGISTRY)))
    assert [(REGISTRY[m].order, m) for m in order] == sorted((c.order, n) for n, c in REGISTRY.items())
    assert method_order(["zzz", *REGISTRY]) == [*order, "zzz"]  # unregistered names last
    assert method_label("zzz") == "zzz"


@pytest.mark.parametrize("name,key", [(n, k) for n in sorted(REGISTRY) for k in REGISTRY[n].parameters])
def test_every_parameter_is_typed(name, key):
    spec = REGISTRY[name].parameters[key]
    if spec.check is None:
        pytest.skip("checked against the model")
    with pytest.raises(SubtuneError, match=f"^{name}: {key} must be "):
        get_method(name, **{key: object()})
    # the same check in a grid (tune) and in the config's methods section
    with pytest.raises(SubtuneError, match=f"methods.{name}.grid point .*{name}: {key} must be"):
        validate_grid(name, {key: [spec.default, object()]}, {}, {})
    cfg = base_config()
    cfg["methods"] = {name: {"params": {key: "not-a-valid-value-\u2603"}}}
    cfg.pop("sweep", None)
    if not spec.check("not-a-valid-value-\u2603"):
        with pytest.raises(SubtuneError, match=f"{name}: {key} must be"):
            validate(json.loads(json.dumps(cfg)), SCHEMA)


def test_the_cli_help_shows_every_method_and_parameter():
    from subtune.cli import build_parser

    parser = build_parser()
    train = parser._subparsers._group_actions[0].choices["train"]
    text = " ".join(train.format_help().split())
    for name, cls in REGISTRY.items():
        assert name in text
        for key, spec in cls.parameters.items():
            assert f"{key}: {' '.join(spec.kind.split())}" in text


PROBE_METHOD = '''
from subtune.methods.base import Method, Param, is_positive_int, register


@register
class Probe(Method):
    """A test method: the selected blocks plus the head."""

    name = "zz_probe"
    label = "Probe"
    order = 15
    needs = "selection"
    parameters = {"blocks": Param([], "a list of block names", lambda v: isinstance(v, list)),
                  "width": Param(2, "a positive integer", is_positive_int)}

    def trainable(self, model):
        return self.modules(model, list(self.params["blocks"]))
'''


@pytest.fixture
def probe_method(tmp_path, monkeypatch):
    (tmp_path / "zz_probe_method.py").write_text(PROBE_METHOD)
    monkeypatch.setattr(methods_pkg, "__path__", [*methods_pkg.__path__, str(tmp_path)])
    try:
        methods_pkg.discover()
        yield REGISTRY["zz_probe"]
    finally:
        REGISTRY.pop("zz_probe", None)
        sys.modules.pop("subtune.methods.zz_probe_method", None)


def test_a_new_method_module_is_found_and_used_everywhere(probe_method):
    """One module, listed nowhere: the config check, the grids, the workflow's needs, the report's rows."""
    assert method_label("zz_probe") == "Probe" and method_needs("zz_probe") == "selection"
    assert method_order(["san", "zz_probe", "lp", "ft"]) == ["lp", "zz_probe", "ft", "san"]
    cfg = base_config()
    cfg["methods"]["zz_probe"] = {"params": {"width": 3}, "grid": {"width": [1, 2], "lr": [0.1]}}
    validate(json.loads(json.dumps(cfg)), SCHEMA)
    cfg["methods"]["zz_probe"]["grid"] = {"width": [1, 0]}
    with pytest.raises(SubtuneError, match="zz_probe: width must be a positive integer, not 0"):
        validate(json.loads(json.dumps(cfg)), SCHEMA)
    cfg["methods"]["zz_probe"] = {"params": {"depth": 1}}
    with pytest.raises(SubtuneError, match="method 'zz_probe' takes no parameter 'depth'"):
        validate(json.loads(json.dumps(cfg)), SCHEMA)


def test_registration_refuses_an_incomplete_method():
    with pytest.raises(SubtuneError, match="own table label"):
        register(type("NoLabel", (Method,), {"name": "zz_nolabel"}))
    with pytest.raises(SubtuneError, match="needs selection but has no parameter 'blocks'"):
        register(type("NoBlocks", (Method,), {"name": "zz_noblocks", "label": "x", "needs": "selection"}))
    with pytest.raises(SubtuneError, match="'lora' is already registered"):
        register(type("Twin", (Method,), {"name": "lora", "label": "Twin"}))
    with pytest.raises(SubtuneError, match="its own name"):
        register(type("Sub", (REGISTRY["lora"],), {"label": "Sub"}))
    assert not {"zz_nolabel", "zz_noblocks"} & set(REGISTRY) and REGISTRY["lora"].label == "LoRA"


def test_the_registries_import_without_torch():
    code = ("import sys\nimport subtune.methods, subtune.data.targets, subtune.report\n"
            "from subtune.data.download import download_dataset\n"
            "print(sorted(m for m in ('torch', 'timm', 'peft') if m in sys.modules))\n")
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.strip().splitlines()[-1] == "[]"


# ------------------------------------------------------------------ datasets
def test_every_target_is_built_from_a_registered_raw_dataset():
    assert targets.TARGETS and registry.RAW
    for t in targets.TARGETS.values():
        assert t.raw is None or t.raw in registry.RAW, t.name
        assert targets.raw_dataset(t.name) == t.raw
        targets.validate(t.name, {})  # its defaults are valid
    used = {t.raw for t in targets.TARGETS.values()}
    assert set(registry.RAW) <= used  # every raw dataset feeds some target


@pytest.mark.parametrize("name", sorted(registry.RAW))
def test_every_raw_dataset_pins_its_files_and_mirrors(name):
    raw = registry.RAW[name]
    files = raw.files()
    assert files and all(isinstance(f, str) and f and "/" not in f for f in files)
    for digests in files.values():
        assert isinstance(digests, tuple) and len(digests) in (2, 3)
        assert all(d is None or (isinstance(d, str) and len(d) in (32, 64)) for d in digests)
        assert any(digests) or raw.check is not None  # a digest, or a structural check (VTAB's zip)
    assert raw.mirrors() and all(m.startswith(SCHEMES) for m in raw.mirrors())


PROBE_DATASET = '''
import numpy as np

from subtune.data.prepared import SPLITS
from subtune.data.registry import Built, Params, carve, gray_split, register, register_raw

FILES = {{"probe.npy": ({sha!r}, None)}}
MIRRORS = []
RAW = register_raw("zz-probe-raw", files=lambda: FILES, mirrors=lambda: MIRRORS)


@register("zz-probe", raw=RAW.name, val_size=4, test_size=4)
def build_probe(raw_dir, p: Params) -> Built:
    """A test dataset: 24 tiny images, two classes."""
    x = np.load(raw_dir / "probe.npy")
    y = np.arange(len(x)) % 2
    parts = carve(len(x), p.seed, 0, [("test", p.test_size), ("val", p.val_size), ("train", p.train_size)], "zz-probe")
    splits = {{s: gray_split(x, y, parts[s], 0, "zz-probe", p.image_size) for s in SPLITS}}
    return Built(splits, ["a", "b"], {{"probe.npy": FILES["probe.npy"][0]}})
'''


def test_a_new_dataset_module_is_one_file(tmp_path, monkeypatch):
    """Its raw file is downloaded (digest checked) and its target built and validated, listed nowhere else."""
    monkeypatch.delenv("SUBTUNE_MIRRORS", raising=False)
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    np.save(mirror / "probe.npy", np.random.default_rng(0).integers(0, 256, (24, 8, 8), dtype=np.uint8))
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "zz_probe_data.py").write_text(PROBE_DATASET.format(sha=sha256_file(mirror / "probe.npy")))
    monkeypatch.setattr(data_pkg, "__path__", [*data_pkg.__path__, str(pkg)])
    try:
        files = download_dataset("zz-probe-raw", tmp_path / "raw", mirrors=[mirror.as_uri()])
        assert list(files) == ["probe.npy"] and (tmp_path / "raw/MANIFEST.json").is_file()
        assert targets.raw_dataset("zz-probe") == "zz-probe-raw"
        targets.validate("zz-probe", {"train_size": 8})
        with pytest.raises(SubtuneError, match="zz-probe: unknown parameter severity"):
            targets.validate("zz-probe", {"severity": 3})
        tensors, manifest = targets.build("zz-probe", tmp_path / "raw", seed=0, image_size=8)
        assert manifest["splits"] == {"train": 16, "val": 4, "test": 4} and manifest["raw"] == "zz-probe-raw"
        assert tuple(tensors["train_x"].shape) == (16, 1, 8, 8)
        # a damaged copy on the mirror is refused by the pinned digest
        (mirror / "probe.npy").write_bytes(b"not the file")
        with pytest.raises(SubtuneError, match="could not fetch probe.npy"):
            download_dataset("zz-probe-raw", tmp_path / "raw2", mirrors=[mirror.as_uri()])
    finally:
        targets.TARGETS.pop("zz-probe", None)
        registry.RAW.pop("zz-probe-raw", None)
        sys.modules.pop("subtune.data.zz_probe_data", None)


def test_registering_a_name_twice_is_refused():
    with pytest.raises(SubtuneError, match="raw dataset 'cifar-10' is registered twice"):
        registry.register_raw("cifar-10", files=dict, mirrors=list)
    with pytest.raises(SubtuneError, match="dataset 'digits' is registered twice"):
        registry.register("digits")


def test_pinned_attributes_are_read_at_download_time(monkeypatch):
    """tests/test_paper_configs.py and tests/test_datasets_remote.py pin digests and drop mirrors through the
    modules' attributes: the registry's records read them when they download."""
    from subtune.data import cifar, cifar10c

    monkeypatch.setattr(cifar10c, "MIRRORS", ["file:///nowhere/"])
    assert registry.RAW["cifar-10-c"].mirrors() == ["file:///nowhere/"]
    monkeypatch.setitem(cifar.CIFAR10.files, "cifar-10-python.tar.gz", ("0" * 64, None))
    assert registry.RAW["cifar-10"].files()["cifar-10-python.tar.gz"] == ("0" * 64, None)


# ------------------------------------------------------------------ discovery and the parsed schema
def test_submodules_skips_private_and_named_modules_and_the_first_directory_wins(tmp_path):
    from subtune._lazy import submodules

    first, second = tmp_path / "first", tmp_path / "second"
    for d, names in ((first, ["b.py", "_helper.py", "shared.py"]), (second, ["a.py", "shared.py", "skipped.py"])):
        d.mkdir()
        for n in names:
            (d / n).write_text("")
    (second / "pkg").mkdir()
    (second / "pkg" / "__init__.py").write_text("")
    (second / "not_a_package").mkdir()  # no __init__.py
    found = submodules([str(first), str(second)], skip={"skipped"})
    assert [m.name for m in found] == ["b", "shared", "a", "pkg"]  # directory by directory
    assert [m.name for m in submodules([str(first), str(second)], skip={"skipped"}, sort=True)] == [
        "a", "b", "pkg", "shared"]
    where = {m.name: (m.module_finder.path, m.ispkg) for m in found}
    assert where["shared"] == (str(first), False) and where["pkg"] == (str(second), True)


def test_import_submodules_imports_one_by_one_in_order(tmp_path, monkeypatch):
    from subtune._lazy import import_submodules

    pkg = tmp_path / "zz_probe_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a_good.py").write_text("VALUE = 1\n")
    (pkg / "b_broken.py").write_text("raise RuntimeError('b_broken imported')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        modules = import_submodules("zz_probe_pkg", [str(pkg)])
        assert next(modules).VALUE == 1 and "zz_probe_pkg.b_broken" not in sys.modules  # not imported yet
        with pytest.raises(RuntimeError, match="b_broken imported"):
            next(modules)
        assert [m.__name__ for m in import_submodules("zz_probe_pkg", [str(pkg)], skip={"b_broken"})] == [
            "zz_probe_pkg.a_good"]
    finally:
        for name in [n for n in sys.modules if n.split(".")[0] == "zz_probe_pkg"]:
            sys.modules.pop(name)


def test_the_schema_is_parsed_once_per_file_version_and_each_caller_gets_a_copy(tmp_path):
    import os

    from subtune.config import _parsed_schema, load_schema

    path = tmp_path / "schema.yaml"
    path.write_text((ROOT / "schemas/config.schema.yaml").read_text())
    one = load_schema(path)
    hits = _parsed_schema.cache_info().hits
    two = load_schema(str(path))
    assert _parsed_schema.cache_info().hits == hits + 1  # not parsed again
    assert one == two and one is not two
    one["properties"].clear()
    one["$defs"]["train"]["$comment"] = "changed"
    three = load_schema(path)
    assert three == two and three["properties"] and three["$defs"]["train"] != one["$defs"]["train"]
    # an edit of the same size is read again (the modification time differs)
    text = path.read_text()
    assert "additionalProperties: false" in text
    path.write_text(text.replace("additionalProperties: false", "additionalProperties: true ", 1))
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert path.stat().st_size == len(text.encode())
    edited = load_schema(path)
    assert edited != two and validate(base_config(), path)
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        load_schema(tmp_path / "missing.yaml")
