"""browserrl.build is the one place a run's parts are constructed from a config."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUILT = ("GRPOConfig", "HFGenerator", "RolloutEngine")
#: The device check runs on accelerator machines without browsergym, which browserrl.config (and so the
#: build layer) imports: it builds the same objects from the same fields itself.
EXEMPT = {"browserrl/build.py", "device_check/plan.py", "device_check/models.py"}


def test_only_the_build_layer_constructs_a_runs_parts():
    pattern = re.compile(rf"\b({'|'.join(BUILT)})\(")
    found = []
    for path in [
        ROOT / "train.py",
        *ROOT.glob("browserrl/**/*.py"),
        *ROOT.glob("scripts/*.py"),
        *ROOT.glob("benchmarks/*.py"),
        *ROOT.glob("device_check/*.py"),
    ]:
        name = str(path.relative_to(ROOT))
        if name in EXEMPT:
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if pattern.search(line) and not line.lstrip().startswith(("#", "class ", "def ")):
                found.append(f"{name}:{number}: {line.strip()}")
    assert not found, "build these through browserrl.build:\n" + "\n".join(found)
