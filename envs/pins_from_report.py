"""Print the exact pins of a `pip install --dry-run --report FILE` resolution, one `name==version` a line.

`make lock-gpu` resolves the GPU cluster env this way: pip solves the whole set on this machine (CUDA wheels
included) without installing anything, so the lock is an install set pip has checked, not a guess.
"""

import json
import sys

with open(sys.argv[1], encoding="utf-8") as f:
    installs = json.load(f)["install"]
pins = [(p["metadata"]["name"], p["metadata"]["version"]) for p in installs]
print("\n".join(f"{name}=={version}" for name, version in sorted(pins, key=lambda pin: pin[0].lower())))
