"""Install into TARGET, without any index, the wheels of WHEELS whose distribution this
Python does not have yet (``scripts/bench-gpu.sh``); what it has stays as it is."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from pathlib import Path


def missing(wheels: Path) -> list[Path]:
    """The wheels whose distribution is not installed."""
    found = []
    for wheel in sorted(wheels.glob("*.whl")):
        name = wheel.name.split("-")[0]
        try:
            importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found.append(wheel)
    return found


def main() -> int:
    """Install the missing wheels; print what was installed."""
    wheels, target = Path(sys.argv[1]), Path(sys.argv[2])
    needed = missing(wheels)
    if not needed:
        return 0
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps"]
    subprocess.run([*command, "--target", str(target), *map(str, needed)], check=True)
    print("installed into", target, ":", ", ".join(w.name.split("-")[0] for w in needed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
