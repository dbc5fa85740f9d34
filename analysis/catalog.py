"""Names and orders the paper uses: VTAB-1k tasks (registry name -> label, with group and
class count read from the task registry, head2toe.tasks.vtab) and methods (registry name ->
label), so every table and plot lists them the same way."""
from __future__ import annotations

from head2toe.tasks import get_task
from head2toe.tasks.vtab import SPECS

# The paper's column order (Tables 1-2), grouped Natural / Specialized / Structured.
VTAB_LABELS: dict[str, str] = {
    "cifar100": "CIFAR-100", "caltech101": "Caltech101", "dtd": "DTD", "flowers102": "Flowers102", "pets": "Pets",
    "svhn": "SVHN", "sun397": "Sun397",
    "camelyon": "Camelyon", "eurosat": "EuroSAT", "resisc45": "Resisc45", "retinopathy": "Retinopathy",
    "clevr_count": "Clevr-Count", "clevr_dist": "Clevr-Dist", "dmlab": "DMLab", "kitti_dist": "KITTI-Dist",
    "dsprites_loc": "dSpr-Loc", "dsprites_ori": "dSpr-Ori", "smallnorb_azim": "sNORB-Azim", "smallnorb_elev": "sNORB-Elev",
}
# name -> (label, group, classes)
VTAB_TASKS: dict[str, tuple[str, str, int]] = {n: (label, SPECS[n].group, SPECS[n].num_classes)
                                              for n, label in VTAB_LABELS.items()}
VTAB_GROUPS = tuple(dict.fromkeys(group for _, group, _ in VTAB_TASKS.values()))
# Tasks outside VTAB (the offline ones, imagefolder:...) are never mixed into a VTAB group:
# a procedural dSprites is not dSprites, and the paper's means are over the 19 VTAB tasks.
OTHER_GROUP = "Offline"
GROUP_ORDER = (*VTAB_GROUPS, OTHER_GROUP)

# Rows of the paper's tables, in its order; head2toe_layers is the layers-vs-features ablation.
METHOD_LABELS: dict[str, str] = {
    "linear": "Linear",
    "all_l2": "All-ℓ2",
    "all_l1": "All-ℓ1",
    "all_group": "All-ℓ2,1",
    "head2toe": "Head2Toe",
    "scratch": "Scratch",
    "finetune": "Fine-tuning",
    "head2toe_ft": "Head2Toe-FT",
    "head2toe_ft_plus": "Head2Toe-FT+",
    "head2toe_layers": "Head2Toe (layers)",
}
TABLE_METHODS = ("linear", "all_l2", "all_l1", "all_group", "head2toe", "scratch", "finetune", "head2toe_ft")

# Backbones the paper reports, by this project's registry name (and timm aliases).
PUBLISHED_BACKBONES = {"resnet50": "resnet50", "vit_b16": "vit_b16", "vit_base_patch16_224": "vit_b16"}


def task_label(task: str) -> str:
    return VTAB_TASKS[task][0] if task in VTAB_TASKS else task


def task_group(task: str) -> str:
    return VTAB_TASKS[task][1] if task in VTAB_TASKS else OTHER_GROUP


def method_label(method: str) -> str:
    return METHOD_LABELS.get(method, method)


def order_tasks(tasks) -> list[str]:
    """The paper's order for VTAB tasks, then the others alphabetically."""
    vtab = [t for t in VTAB_TASKS if t in set(tasks)]
    return vtab + sorted(set(tasks) - set(vtab))


def order_methods(methods) -> list[str]:
    known = [m for m in METHOD_LABELS if m in set(methods)]
    return known + sorted(set(methods) - set(known))


def num_classes(task: str) -> int | None:
    """Classes of a task, from the task registry (None for a task it cannot build, e.g. an
    imagefolder path gone: no cost row)."""
    if task in VTAB_TASKS:
        return VTAB_TASKS[task][2]
    try:
        return int(get_task(task).num_classes)
    except (ValueError, OSError):  # H2TError: unknown, or its folder unreadable
        return None
