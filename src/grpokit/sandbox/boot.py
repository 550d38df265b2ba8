"""Runs first inside the sandbox, before any untrusted code: drops to the run's own user id
(when started as root), applies the rlimits, then runs the program as ``__main__``.

Standard library only, no grpokit import: the sandbox copies this file into its read-only
harness directory and runs it with the sandbox's interpreter. Argument: one JSON object
``{"uid": int | null, "rlimits": {name: [soft, hard]}, "main": path}``.
"""

import json
import os
import resource
import sys


def _boot() -> str:
    config = json.loads(sys.argv[1])
    uid = config.get("uid")
    if uid is not None and os.getuid() == 0:
        # A fresh unprivileged uid per run: RLIMIT_NPROC counts processes per uid (root is
        # exempt), so this is what bounds a fork bomb to this run; setresuid also clears every
        # capability the sandbox kept for this step.
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
    for name, (soft, hard) in config["rlimits"].items():
        resource.setrlimit(getattr(resource, name), (soft, hard))
    main = config["main"]
    sys.argv = [main]
    sys.path[0] = os.path.dirname(main)
    return main


if __name__ == "__main__":
    _main_path = _boot()
    del _boot
    with open(_main_path, "rb") as _handle:
        _code = compile(_handle.read(), _main_path, "exec")
    del _handle
    exec(_code, {"__name__": "__main__", "__file__": _main_path, "__builtins__": __builtins__})
