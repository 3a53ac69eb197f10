"""`python -m vlab_backend.training prepare|finish`: the lab's side of a TYPE3 job on
`host-cpu` (see `targets/host-cpu`). A failure is one line on stderr, `error: ...`, exit 2.

    prepare MODEL ODT_CONFIG PREPARED    # support step: the model made trainable, the plan
    finish PREPARED WORK OUT             # manager step: the trained model and report_odt.json
"""

from __future__ import annotations

import sys
from pathlib import Path

USAGE = ("usage: python -m vlab_backend.training prepare MODEL ODT_CONFIG PREPARED | "
         "finish PREPARED WORK OUT")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    from vlab_backend.training.prepare import PrepareError, prepare
    from vlab_backend.training.report import FinishError, finish

    try:
        if len(args) == 4 and args[0] == "prepare":
            plan = prepare(Path(args[1]), Path(args[2]), Path(args[3]))
            converted = plan["converted"]
            print(f"training plan: {plan['epochs']} epoch(s), batch {plan['batch_size']}, "
                  f"{plan['optimizer']} at {plan['learning_rate']:g}, {plan['loss']} loss on "
                  f"{plan['trained_output']!r} ({plan['targets'].replace('_', '-')} targets), "
                  f"{len(plan['trainable'])} trainable tensor(s)"
                  + (f"; {plan['cut']['op_type']} cut for training, put back after"
                     if plan["cut"] else "")
                  + (f"; converted from opset {converted['from_opset']} to "
                     f"{converted['to_opset']}" if converted else ""))
        elif len(args) == 4 and args[0] == "finish":
            report = finish(Path(args[1]), Path(args[2]), Path(args[3]))
            accuracy = report["accuracy_test"]["values"]
            print(f"trained model: {report['model_size']} bytes"
                  + (f", test accuracy {accuracy[-1]:.4f}" if accuracy and accuracy[-1]
                     is not None else ""))
        else:
            print(USAGE, file=sys.stderr)
            return 2
    except (PrepareError, FinishError) as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
