"""The architecture is enforced, not only described: the import-linter contracts in pyproject.toml
(slm imports no Django and no app; no app imports annotate; chat imports no other app; sentiment and
annotate meet only through the registry; annotate's services never import its jobs; apps -> slmsite -> slm)
hold for the code as it is.

lint-imports runs in its own process: in the test process the Twisted/zope.interface modules that
daphne loads break its contract-option introspection."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_import_contracts_are_kept() -> None:
    cli = Path(sys.executable).with_name("lint-imports")
    proc = subprocess.run(
        [str(cli), "--config", str(ROOT / "pyproject.toml"), "--no-cache"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    report = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "BROKEN" not in report, report
    assert "Contracts: 6 kept, 0 broken." in report, report
