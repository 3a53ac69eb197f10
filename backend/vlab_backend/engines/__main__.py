"""`python -m vlab_backend.engines ENGINE`: the model formats ENGINE runs in this Python
environment, space-separated as in a job's `VLAB_ENGINE_FORMATS`; or, with exit code 1, the
one-line reason it does not run here (unknown, or its runtime is not installed). Both on
stdout, for a shell's `$(...)`; stderr may carry the registry's warnings.

For a target repository's support step when the job does not carry `VLAB_ENGINE_FORMATS`
(targets/host-cpu asks only then: an interpreter start is tens of milliseconds).
"""

from __future__ import annotations

import sys

from vlab_backend.engines import get_spec


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m vlab_backend.engines ENGINE", file=sys.stderr)
        return 2
    try:
        spec = get_spec(argv[0])
    except KeyError as exc:
        print(exc.args[0])
        return 1
    missing = spec.missing_runtime()
    if missing is not None:
        print(f"engine {spec.name!r} does not run here: {missing}")
        return 1
    print(" ".join(fmt.lower() for fmt in spec.formats))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
