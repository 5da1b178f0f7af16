"""backbone.arch is checked against the installed timm before any job runs, without importing torch."""

import subprocess
import sys

import pytest

from subtune import SubtuneError
from subtune.models import names

from helpers.workflow import ROOT, edit_config, job_stats, smk, workdir


def test_scan_matches_the_installed_timm():
    """The source scan is exactly timm's registry: a timm that registers models differently fails here."""
    import timm

    ours = set(names._scan(ROOT / "tests", ROOT / "src/subtune/models"))  # ours: subtune.models (wrn28_10_cifar)
    assert "wrn28_10_cifar" in ours and "wrn28_10_cifar" in names.registered_models()
    scanned = set(names._scan(names._timm_models_dir(), ROOT / "tests"))  # tests/: no models of ours
    # timm's registry also holds ours once subtune.models is imported (this session may have)
    assert scanned == set(timm.list_models()) - ours
    for name in timm.list_pretrained():  # every pretrained name passes, tags included
        names.check_arch(name)


@pytest.mark.parametrize("arch", ["resnet18", "resnet50.tv2_in1k", "vit_base_patch16_224_miil.in21k",
                                  "vit_base_patch14_dinov2.lvd142m", "hf-hub:timm/resnet18.a1_in1k"])
def test_known_arch_passes(arch):
    names.check_arch(arch)


@pytest.mark.parametrize("arch, needle", [
    ("resnet181", "unknown model backbone.arch 'resnet181': timm 1.0.31 has no model 'resnet181'; did you mean resnet18"),
    ("resnt18", "did you mean resnet18"),
    ("vit_base_patch16_224.orig_in21kk", "no tag 'orig_in21kk' for vit_base_patch16_224; known tags include "
                                         "vit_base_patch16_224.orig_in21k"),
    ("resnet18.tv_in1kk", "resnet18.tv_in1k"),
    ("", "is not a model name"),
])
def test_unknown_arch_is_one_line_with_close_matches(arch, needle):
    with pytest.raises(SubtuneError) as exc:
        names.check_arch(arch)
    msg = str(exc.value).replace(names._timm_version(), "1.0.31")
    assert needle in msg and "\n" not in msg


def test_own_registered_models_are_known(tmp_path):
    """Our models, registered with timm's @register_model in src/subtune/models, count as known."""
    (tmp_path / "wrn.py").write_text(
        "from timm.models import register_model\n\n\n@register_model\ndef wrn28_10_cifar(pretrained=False, **kw):\n"
        "    return None\n"
    )
    found = names._scan(names._timm_models_dir(), tmp_path)
    assert found["wrn28_10_cifar"] == tmp_path / "wrn.py" and "resnet18" in found


def test_checking_imports_no_torch():
    code = ("import sys\nfrom subtune.models.names import check_arch\ncheck_arch('resnet50.tv2_in1k')\n"
            "print(sorted(m for m in ('torch', 'timm', 'peft') if m in sys.modules))\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert p.stdout.strip() == "[]"


@pytest.mark.slow
def test_unknown_arch_fails_the_dry_run_before_any_job(tmp_path):
    wd = workdir(tmp_path)
    bad = edit_config(wd, "bad_arch.yaml", lambda c: c["backbone"].update(arch="resnet181"))
    p = smk(wd, "--dry-run", config=bad, check=False)
    out = p.stdout + p.stderr
    assert p.returncode != 0
    lines = [line for line in out.splitlines() if "backbone.arch" in line]
    assert len(lines) == 1 and "config error: unknown model backbone.arch 'resnet181'" in lines[0], out[-2000:]
    assert "did you mean resnet18" in lines[0]
    assert job_stats(out) == {} and not (wd / "data").exists()
    good = edit_config(wd, "good_arch.yaml", lambda c: c["backbone"].update(arch="resnet18d"))
    assert "download" in job_stats(smk(wd, "--dry-run", config=good).stdout)
