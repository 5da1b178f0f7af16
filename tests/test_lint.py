"""`snakemake --lint` finds nothing that the workflow does not justify in a comment."""

import re

import pytest

from helpers.workflow import ROOT, smk, workdir

pytestmark = pytest.mark.slow  # runs `snakemake --lint`

# A justification: `# snakemake --lint: "<start of the finding>" is accepted: <why>` in the Snakefile or a rule file.
ACCEPTED = re.compile(r'^\s*# snakemake --lint: "([^"]+)" is accepted: \S', re.M)


def lint_findings(output: str) -> list[tuple[str, str]]:
    """(where, finding) for each `* finding:` under each `Lints for ...:` heading of the text output."""
    out, where = [], None
    for line in output.splitlines():
        head = re.match(r"^Lints for (.+):$", line)
        if head:
            where = head.group(1)
            continue
        item = re.match(r"^    \* (.+?):?$", line)
        if item and where:
            out.append((where, item.group(1)))
    return out


def test_lint_finds_nothing_unjustified(tmp_path):
    wd = workdir(tmp_path)
    texts = [(ROOT / "Snakefile").read_text()] + [f.read_text() for f in sorted((ROOT / "rules").glob("*.smk"))]
    accepted = [a for t in texts for a in ACCEPTED.findall(t)]
    assert accepted, "no justified findings found (the comment form changed?)"
    seen = []
    for config in ("configs/test.yaml", "configs/peft-vtab.yaml"):  # pretrain and hub: every rule is linted
        p = smk(wd, "--lint", config=config, check=False)
        findings = lint_findings(p.stdout + p.stderr)
        assert findings or p.returncode == 0, (p.stdout + p.stderr)[-3000:]
        seen += findings
    unjustified = sorted({(w, f) for w, f in seen if not any(f.startswith(a) for a in accepted)})
    assert not unjustified, unjustified
